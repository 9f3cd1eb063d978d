"""firmware: cross-compile and gate the chip's firmware; readers of its entry."""
from __future__ import annotations

from pathlib import Path

from mcu.build import BIN, ELF, MAP
from pipeline.stage import ROOT, Stage, summary

# firmware sources enter the stage's key (mcu/build.py and friends are found by import)
MCU_SOURCES = tuple(sorted(f"{d}/{p.name}" for d in ("mcu/src", "mcu/padauk/src")
                           for p in (ROOT / d).iterdir() if p.is_file()))
IHX = "firmware.ihx"          # padauk: the Intel HEX a programmer writes (its build: BUILD/)
BUILD = "build"

STAGE = Stage(
    name="firmware",
    doc="Build the chip's firmware (CH32V00x: demo or serial; Padauk: SDCC demo); gate flash/ROM, RAM, multiplies",
    module="pipeline.firmware",
    keys=("mcu.target", "mcu.mode", "mcu.demo_images", "mcu.kernels", "mcu.segment_pins",
          "mcu.segment_active_low"),
    inputs=("data", "export"),
    # RISC-V: ELF, BIN, MAP, LISTING; padauk: IHX, MAP; build/: generated sources, objects (a pattern: the
    # families write different files)
    outputs=(MAP, "firmware.*", f"{BUILD}/*"),
    extra_sources=(*MCU_SOURCES, "engine/bitmcu.c", "engine/bitmcu.h"),
)


def elf(entry: Path) -> Path:
    return entry / ELF


def binary(entry: Path) -> Path:
    """The image a programmer writes at 0x08000000."""
    return entry / BIN


def ihx(entry: Path) -> Path:
    """Padauk: the Intel HEX a programmer writes."""
    return entry / IHX


def build_dir(entry: Path) -> Path:
    """Padauk: the SDCC build (its .map and .ihx, mcu.padauk.sim.load reads it)."""
    return entry / BUILD


def target(entry: Path) -> str:
    return summary(entry)["target"]
