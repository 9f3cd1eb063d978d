"""`doit flash` for every family: the RISC-V chips through a WCH-LinkE (mcu/flash.py), the Padauk parts through
the Easy PDK programmer (mcu/padauk/flash.py)."""
from __future__ import annotations

from pathlib import Path

from contract.chips import CHIPS
from mcu import flash as riscv
from mcu.padauk import flash as padauk
from pipeline.stages import firmware


def check_setup(target: str) -> None:
    """Raise FlashError when the probe or tool the target needs is missing (before the firmware is built)."""
    if CHIPS[target].family == "padauk":
        padauk.check_setup()
    else:
        riscv.check_setup()


def flash(entry: Path) -> str:
    """Write the firmware stage's entry to the board; returns the tool's output."""
    target = firmware.target(entry)
    if CHIPS[target].family == "padauk":
        return padauk.flash(firmware.ihx(entry), target)
    return riscv.flash(firmware.binary(entry))
