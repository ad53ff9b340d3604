# A hostile guest that never stops: every round writes a byte to COM1, notifies a queue the
# device does not have, writes virtio-mmio device 0's config space and a reserved register,
# reads a register that does not exist, and writes and reads an address in the MMIO gap that
# no device claims. Only a hard stop ends it (it ignores the power button).
    .code64
    .globl _start
_start:
    cli
    mov $0xD0002000, %rdi       # virtio-mmio device 0 (arch::layout::VIRTIO_MMIO_BASE)
    mov $0xC0000000, %rsi       # start of the MMIO gap: nothing there
1:  mov $0x41, %al
    mov $0x3f8, %dx
    out %al, %dx                # COM1 transmit
    movl $0xffff, 0x50(%rdi)    # QueueNotify of queue 65535
    movl $0x12345678, 0x100(%rdi)  # device config space
    movl $0, 0xffc(%rdi)        # reserved register
    mov 0xff0(%rdi), %eax       # reserved register, read
    movl $0, (%rsi)             # unclaimed MMIO write
    mov (%rsi), %eax            # unclaimed MMIO read
    jmp 1b
