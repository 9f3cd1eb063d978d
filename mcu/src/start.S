/* start.S: vector table and reset for the CH32V003 / CH32V002 (linker symbols as in ch32fun).

   Entry 0 is a 32-bit `j` to the reset code; entries 1..3 hold absolute handler addresses
   (mtvec = table | 3 selects QingKe's absolute-address vector mode). No interrupt is ever enabled
   (mstatus.MIE stays 0) and the code has no ecall or ebreak, so the table ends after HardFault
   (entry 3, every other exception) and NMI (2), which go to fw_fault; flash is scarce.
*/
    .section .init, "ax", @progbits
    .globl _start
    .option push
    .option norvc
_start:
    j reset
    .rept 3
    .word fw_fault
    .endr
    .option pop

    .section .text.reset, "ax", @progbits
reset:
    .option push
    .option norelax
    la gp, __global_pointer$
    .option pop
    la sp, _eusrstack

    /* .data and .ramfunc: copy their load images from flash to SRAM */
    la a0, _data_lma
    la a1, _data_vma
    la a2, _edata
    call copy_words
    la a0, _ramfunc_lma
    la a1, _ramfunc_vma
    la a2, _eramfunc
    call copy_words

    /* .bss: zero */
    la a1, _sbss
    la a2, _ebss
1:  bgeu a1, a2, 2f
    sw zero, 0(a1)
    addi a1, a1, 4
    j 1b
2:
    li t0, 0x1880                 /* MPP = machine, MPIE; MIE stays 0: no interrupts */
    csrw mstatus, t0
    la t0, _start
    ori t0, t0, 3
    csrw mtvec, t0
    call system_init
    call main
    j fw_halt

/* copy words from a0 to a1 until a1 reaches a2 (all word aligned) */
copy_words:
1:  bgeu a1, a2, 2f
    lw t0, 0(a0)
    sw t0, 0(a1)
    addi a0, a0, 4
    addi a1, a1, 4
    j 1b
2:  ret
