# Pulses the reset line through the i8042 controller, as `reboot=k` does (tinyvmm exit 3).
    .code64
    .globl _start
_start:
    mov $0xfe, %al
    out %al, $0x64
1:  hlt
    jmp 1b
