"""mcu/emulator.py and mcu/cycles.py on small assembly programs with known instruction counts and costs."""
import subprocess

import pytest

from mcu import cycles as cm
from mcu.build import CC  # the cross compiler (BITMCU_CROSS may name another)
from mcu.emulator import Emulator, EmulatorError

pytestmark = pytest.mark.riscv  # the programs are assembled with mcu.build.CC

# Common frame: _start sets sp, runs BODY, then calls fw_halt. fw_getc(a0 = timeout) polls USART1 like
# mcu/src/system.c: returns the byte, or -1 once SysTick has advanced by the timeout (0 = forever).
PROGRAM = r"""
    .option norvc
    .equ STK_CNT, 0xE000F008
    .equ USART_STATR, 0x40013800
    .equ USART_DATAR, 0x40013804
    .text
    .globl _start
_start:
    li sp, 0x20000800
{body}
    call fw_halt
    .globl fw_halt
fw_halt:
    j fw_halt
    .globl fw_getc
fw_getc:
    li t0, STK_CNT
    lw t1, 0(t0)
1:  li t2, USART_STATR
    lw t2, 0(t2)
    andi t2, t2, 0x20
    bnez t2, 2f
    beqz a0, 1b
    lw t2, 0(t0)
    sub t2, t2, t1
    bltu t2, a0, 1b
    li a0, -1
    ret
2:  li t2, USART_DATAR
    lw a0, 0(t2)
    ret
    .globl putc
putc:
    li t2, USART_DATAR
    sw a0, 0(t2)
    ret
    .balign 4
    .globl count_loop
count_loop:          # a0 iterations of a two-instruction loop, position-independent
1:  addi a0, a0, -1
    bnez a0, 1b
    ret
    .globl load_loop
load_loop:           # a0 iterations that each load from a1
1:  lw a3, 0(a1)
    addi a0, a0, -1
    bnez a0, 1b
    ret
count_loop_end:
"""

MARK = "    li a5, STK_CNT\n    lw a4, 0(a5)\n"


def build(tmp_path, body, march="rv32ec_zicsr"):
    src = tmp_path / "p.S"
    src.write_text(PROGRAM.format(body=body))
    elf = tmp_path / "p.elf"
    subprocess.run([CC, f"-march={march}", "-mabi=ilp32e", "-nostdlib", "-nostartfiles", "-Wl,-Ttext=0",
                    "-o", str(elf), str(src)], check=True, capture_output=True)
    return elf


def call(fn, *args):
    regs = ("a0", "a1", "a2")
    return "".join(f"    li {r}, {v}\n" for r, v in zip(regs, args)) + f"    call {fn}\n"


def deltas(emu):
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(emu.marks[::2], emu.marks[1::2])]


@pytest.mark.parametrize("target", ["ch32v003", "ch32v002"])
def test_loop_costs_per_iteration_from_flash_and_sram(tmp_path, target):
    core = cm.CORES[target]
    copy = ("    la a0, count_loop\n    la a1, count_loop_end\n    li a2, 0x20000100\n"
            "3:  lw a3, 0(a0)\n    sw a3, 0(a2)\n    addi a0, a0, 4\n    addi a2, a2, 4\n    bltu a0, a1, 3b\n")

    def sram_call(n: int) -> str:
        return f"    li a0, {n}\n    li t0, 0x20000100\n    jalr ra, 0(t0)\n"

    body = (MARK + call("count_loop", 10) + MARK + MARK + call("count_loop", 30) + MARK + copy
            + MARK + sram_call(10) + MARK + MARK + sram_call(30) + MARK)
    emu = Emulator(build(tmp_path, body), target)
    assert emu.run() == "halt"
    (i10, c10), (i30, c30), (s10, sc10), (s30, sc30) = deltas(emu)
    assert i30 - i10 == 2 * 20 and s30 - s10 == 2 * 20             # exact instruction counts
    # 32-bit addi + bnez from flash, taken back to flash; from SRAM 1 + 1 + taken to SRAM
    assert (c30 - c10) / 20 == pytest.approx(2 * core.flash32 + core.taken_flash)
    assert (sc30 - sc10) / 20 == pytest.approx(2 + core.taken_sram)
    assert emu.instructions_in["sram"] > 0


def test_flash_data_loads_cost_more_than_sram_loads(tmp_path):
    body = MARK + call("load_loop", 20, 0x08000104) + MARK + MARK + call("load_loop", 20, 0x20000100) + MARK
    emu = Emulator(build(tmp_path, body), "ch32v003")
    assert emu.run() == "halt"
    (fi, fc), (si, sc) = deltas(emu)
    assert fi == si and fc - sc == pytest.approx(20 * cm.CORES["ch32v003"].flash_load_extra)
    assert emu.flash_loads >= 20


def test_usart_capture_and_idle_resume(tmp_path):
    body = (call("putc", ord("h")) + call("putc", ord("i"))
            + "4:  li a0, 0\n    call fw_getc\n    addi a0, a0, 1\n    call putc\n    j 4b\n")
    emu = Emulator(build(tmp_path, body), "ch32v003")
    assert emu.run() == "idle" and bytes(emu.tx) == b"hi"
    assert emu.run() == "idle" and bytes(emu.tx) == b"hi"     # nothing fed: still waiting, no output
    emu.feed(b"ab")
    assert emu.run() == "idle" and bytes(emu.tx) == b"hibc"


def test_expired_timeout_returns_minus_one(tmp_path):
    body = ("    li a0, 100000\n    call fw_getc\n    addi a0, a0, 0x42\n    call putc\n"  # -1 + 0x42 = 'A'
            "4:  li a0, 0\n    call fw_getc\n    j 4b\n")
    emu = Emulator(build(tmp_path, body), "ch32v003")
    assert emu.run() == "idle" and bytes(emu.tx) == b""        # a timeout only passes when asked
    before = emu.cycles
    assert emu.run(expire_timeouts=True) == "idle" and bytes(emu.tx) == b"A"
    assert emu.cycles - before >= 100000


def test_systick_reads_are_marks_of_the_cycle_clock(tmp_path):
    emu = Emulator(build(tmp_path, MARK + call("count_loop", 50) + MARK), "ch32v003")
    assert emu.run() == "halt"
    (i0, c0), (i1, c1) = emu.marks
    assert 0 < i0 < i1 <= emu.instructions and 0 < c0 < c1 <= emu.cycles


def test_multiply_refused_on_v003_and_run_on_v002(tmp_path):
    body = "    li a0, 6\n    li a1, 7\n    mul a0, a0, a1\n    call putc\n"
    elf = build(tmp_path, body, march="rv32emc_zicsr")
    with pytest.raises(EmulatorError, match="mul instruction .* the ch32v003 has no multiplier"):
        Emulator(elf, "ch32v003").run()
    emu = Emulator(elf, "ch32v002")
    assert emu.run() == "halt" and bytes(emu.tx) == bytes([42])


def test_divide_refused_on_both(tmp_path):
    elf = build(tmp_path, "    li a0, 6\n    li a1, 3\n    div a0, a0, a1\n", march="rv32emc_zicsr")
    for target in ("ch32v003", "ch32v002"):
        with pytest.raises(EmulatorError, match="div/rem instruction"):
            Emulator(elf, target).run()


@pytest.mark.parametrize("addr, target, ok", [(0x30000000, "ch32v003", False), (0x20000900, "ch32v003", False),
                                              (0x20000900, "ch32v002", True)])
def test_memory_outside_the_chip_is_an_error(tmp_path, addr, target, ok):
    emu = Emulator(build(tmp_path, f"    li a1, {addr}\n    lw a0, 0(a1)\n"), target)
    if ok:
        assert emu.run() == "halt"
    else:
        with pytest.raises(EmulatorError, match=f"{addr:#010x}"):
            emu.run()


def test_store_to_flash_is_an_error(tmp_path):
    with pytest.raises(EmulatorError, match="store of 0x5 to flash"):
        Emulator(build(tmp_path, "    li a1, 0x100\n    li a0, 5\n    sw a0, 0(a1)\n"), "ch32v003").run()


def test_ebreak_and_instruction_limit(tmp_path):
    assert Emulator(build(tmp_path, "    ebreak\n"), "ch32v003").run() == "ebreak"
    emu = Emulator(build(tmp_path, "5:  j 5b\n"), "ch32v003")
    assert emu.run(max_instructions=1000) == "limit" and emu.instructions >= 1000


def test_classify_compressed_and_full_instructions():
    assert cm.classify(0x00052503, 4) == cm.LOAD          # lw a0, 0(a0)
    assert cm.classify(0x00a52023, 4) == cm.STORE         # sw a0, 0(a0)
    assert cm.classify(0x02b50533, 4) == cm.MUL           # mul a0, a0, a1
    assert cm.classify(0x02b54533, 4) == cm.DIV           # div a0, a0, a1
    assert cm.classify(0x4108, 2) == cm.LOAD              # c.lw a0, 0(a0)
    assert cm.classify(0xc108, 2) == cm.STORE             # c.sw a0, 0(a0)
    assert cm.classify(0xfd79, 2) == cm.BRANCH            # c.bnez a0, ...
    assert cm.classify(0x8082, 2) == cm.JUMP              # c.jr ra (ret)
    assert cm.classify(0x0505, 2) == cm.ALU               # c.addi a0, 1
    assert cm.classify(0x9002, 2) == cm.SYSTEM            # c.ebreak
