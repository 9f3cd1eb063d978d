"""The chips as one table: ISA, multiplier, memories and their addresses, clock, usable pins.

Firmware build, size gate, emulator, export's multiplier check and the config's `mcu.target`
choices all read this table, so a new chip is one row here (plus its cycle costs, mcu/cycles.py).
"""
from __future__ import annotations

from dataclasses import dataclass

FLASH_ALIAS = 0x08000000     # flash is linked at 0 and mirrored here (the address a programmer writes)
SRAM_BASE = 0x20000000


@dataclass(frozen=True)
class Chip:
    name: str
    id: int                      # the target id in the serial protocol's PONG
    isa: str                     # what the core executes
    march: tuple[str, ...]       # GCC's -march/-mabi (and friends) for it
    multiplier: bool             # a multiply instruction (Zmmul); no chip here divides
    flash: int                   # bytes of flash at 0 (and at FLASH_ALIAS)
    ram: int                     # bytes of SRAM at SRAM_BASE
    clock_hz: int                # HCLK the firmware sets up (HSI x2)
    flash_latency: int           # FLASH ACTLR wait states at that clock
    pins: tuple[str, ...]        # GPIOs free for a 7-segment display (not SWIO, USART1 or NRST)


_PINS = ("PA1", "PA2", *(f"PC{i}" for i in range(8)), "PD0", "PD2", "PD3", "PD4")

CHIPS: dict[str, Chip] = {c.name: c for c in (
    Chip("ch32v003", 0, "RV32EC", ("-march=rv32ec_zicsr", "-mabi=ilp32e"), False, 16384, 2048,
         48_000_000, 1, _PINS),
    # Zmmul: GCC 12 only emits mul for rv32em; -mno-div keeps division out (the chip has none)
    Chip("ch32v002", 1, "RV32EmC", ("-march=rv32emc_zicsr", "-mabi=ilp32e", "-mno-div"), True, 16384, 4096,
         48_000_000, 2, _PINS),
    # the V002's core and flash interface with 62 KiB flash and 8 KiB SRAM: room for CNN-64 class models
    Chip("ch32v006", 2, "RV32EmC", ("-march=rv32emc_zicsr", "-mabi=ilp32e", "-mno-div"), True, 63488, 8192,
         48_000_000, 2, _PINS),
)}
CHIP_NAMES = tuple(CHIPS)
