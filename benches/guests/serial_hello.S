# Writes "hello from the guest\n" to COM1's transmit register, then powers off.
    .code64
    .globl _start
_start:
    lea msg(%rip), %rsi
    mov $0x3f8, %dx
1:  lodsb
    test %al, %al
    jz 2f
    out %al, %dx
    jmp 1b
2:  mov $0x34, %al
    mov $0x3c0, %dx
    out %al, %dx
3:  hlt
    jmp 3b
msg:
    .asciz "hello from the guest\n"
