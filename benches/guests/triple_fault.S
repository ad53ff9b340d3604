# Loads an empty IDT and raises an exception: a triple fault, which KVM reports as shutdown.
    .code64
    .globl _start
_start:
    lidt idt_null(%rip)
    ud2
idt_null:
    .word 0
    .quad 0
