"""The chips as one table: family, ISA, multiplier, memories and their addresses, clock, usable pins.

Two families share the table, and the config's `mcu.target` choices are all its rows; the firmware and
emulate stages pick a backend by `family`. `riscv` (CH32V00x): the firmware build, size gate, emulator and
export's multiplier check read these rows (RISCV_NAMES), so a new RISC-V chip is one row here (plus its cycle
costs, mcu/cycles.py). `padauk` (PMS150C, PFS154: 8-bit, one accumulator, no multiplier): the SDCC engine of
mcu/padauk, its size gate and the simulator spdk read these rows (PADAUK_NAMES); the RISC-V build and
emulator refuse them by name.
"""
from __future__ import annotations

from dataclasses import dataclass

FLASH_ALIAS = 0x08000000     # flash is linked at 0 and mirrored here (the address a programmer writes)
SRAM_BASE = 0x20000000


@dataclass(frozen=True)
class Chip:
    family: str                  # riscv | padauk
    name: str
    id: int                      # the target id in the serial protocol's PONG
    isa: str                     # what the core executes
    march: tuple[str, ...]       # riscv: GCC's -march/-mabi (and friends); padauk: SDCC's -mpdk13/-mpdk14
    multiplier: bool             # a multiply instruction (Zmmul); no chip here divides
    flash: int                   # riscv: bytes of flash at 0 (and at FLASH_ALIAS); padauk: 0 (see rom_words)
    ram: int                     # bytes of SRAM (riscv: at SRAM_BASE; padauk: data memory from 0)
    clock_hz: int                # riscv: HCLK the firmware sets up (HSI x2); padauk: SYSCLK assumed, IHRC/2
    flash_latency: int           # riscv: FLASH ACTLR wait states at that clock; padauk: 0
    pins: tuple[str, ...]        # GPIOs free for a 7-segment display (not SWIO, USART1 or NRST)
    rom_words: int = 0           # padauk: program memory in instruction words (a const byte takes a word)
    word_bits: int = 0           # padauk: bits per program word (13 on pdk13, 14 on pdk14)


_PINS = ("PA1", "PA2", *(f"PC{i}" for i in range(8)), "PD0", "PD2", "PD3", "PD4")

CHIPS: dict[str, Chip] = {c.name: c for c in (
    Chip("riscv", "ch32v003", 0, "RV32EC", ("-march=rv32ec_zicsr", "-mabi=ilp32e"), False, 16384, 2048,
         48_000_000, 1, _PINS),
    # Zmmul: GCC 12 only emits mul for rv32em; -mno-div keeps division out (the chip has none)
    Chip("riscv", "ch32v002", 1, "RV32EmC", ("-march=rv32emc_zicsr", "-mabi=ilp32e", "-mno-div"), True, 16384, 4096,
         48_000_000, 2, _PINS),
    # the V002's core and flash interface with 62 KiB flash and 8 KiB SRAM: room for CNN-64 class models
    Chip("riscv", "ch32v006", 2, "RV32EmC", ("-march=rv32emc_zicsr", "-mabi=ilp32e", "-mno-div"), True, 63488, 8192,
         48_000_000, 2, _PINS),
    # Padauk: the program memory is 1,024 x 13-bit OTP words / 2,048 x 14-bit flash words; the internal high
    # speed RC oscillator (IHRC) runs at 16 MHz and the engine assumes SYSCLK = IHRC/2 = 8 MHz, one
    # instruction per cycle for most instructions (the simulator counts ticks, not time)
    Chip("padauk", "pms150c", 3, "pdk13", ("-mpdk13",), False, 0, 64, 8_000_000, 0, (), 1024, 13),
    Chip("padauk", "pfs154", 4, "pdk14", ("-mpdk14",), False, 0, 128, 8_000_000, 0, (), 2048, 14),
)}
CHIP_NAMES = tuple(CHIPS)
FAMILIES = ("riscv", "padauk")
RISCV_NAMES = tuple(c.name for c in CHIPS.values() if c.family == "riscv")     # what mcu/build.py and mcu/emulator.py run
PADAUK_NAMES = tuple(c.name for c in CHIPS.values() if c.family == "padauk")   # what mcu/padauk builds for
