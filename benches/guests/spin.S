# Ignores everything, including the power button: only a hard stop ends it.
    .code64
    .globl _start
_start:
    cli
1:  hlt
    jmp 1b
