# Reports a kernel panic through the pvpanic port (tinyvmm exit 4).
    .code64
    .globl _start
_start:
    mov $0x505, %dx
    in %dx, %al             # supported events, as Linux's driver reads them
    and $1, %al             # PVPANIC_PANICKED
    out %al, %dx
1:  hlt
    jmp 1b
