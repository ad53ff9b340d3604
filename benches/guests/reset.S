# Writes the ACPI reset value to the PM port (tinyvmm exit 3).
    .code64
    .globl _start
_start:
    mov $0x01, %al
    mov $0x3c0, %dx
    out %al, %dx
1:  hlt
    jmp 1b
