# Echoes what arrives on COM1 until it reads 'q', then powers off (tests stdin forwarding).
    .code64
    .globl _start
_start:
1:  mov $0x3fd, %dx         # line status register
    in %dx, %al
    test $1, %al            # data ready?
    jz 1b
    mov $0x3f8, %dx
    in %dx, %al             # receive buffer
    cmp $'q', %al
    je 2f
    out %al, %dx            # transmit it back
    jmp 1b
2:  mov $0x34, %al
    mov $0x3c0, %dx
    out %al, %dx
3:  hlt
    jmp 3b
