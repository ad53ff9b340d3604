# Stops at its first instruction, entered through the PVH boot protocol (32-bit, paging off).
# The same ELF runs under QEMU (with isa-debug-exit at port 0x3c0) and under tinyvmm (ACPI PM
# port 0x3c0: S5), so both VMMs can be timed on identical guest work.
    .section .note.Xen, "a", @note
    .balign 4
    .long 4            # name size ("Xen\0")
    .long 4            # descriptor size
    .long 18           # XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .balign 4
    .long _start32

    .text
    .code32
    .globl _start32
_start32:
    mov $0x34, %al
    mov $0x3c0, %dx
    out %al, %dx
1:  hlt
    jmp 1b
