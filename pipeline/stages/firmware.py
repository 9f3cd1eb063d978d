"""firmware: cross-compile and gate the chip's firmware; readers of its entry."""
from __future__ import annotations

from pathlib import Path

from mcu.build import BIN, ELF, LISTING, MAP
from pipeline.stage import ROOT, Stage, summary

# firmware sources enter the stage's key (mcu/build.py and friends are found by import)
MCU_SOURCES = tuple(sorted(f"mcu/src/{p.name}" for p in (ROOT / "mcu" / "src").iterdir() if p.is_file()))

STAGE = Stage(
    name="firmware",
    doc="Cross-compile the CH32V00x firmware (demo or serial mode); gate flash, RAM and multiplies",
    module="pipeline.firmware",
    keys=("mcu.target", "mcu.mode", "mcu.demo_images", "mcu.kernels", "mcu.segment_pins",
          "mcu.segment_active_low"),
    inputs=("data", "export"),
    outputs=(ELF, BIN, MAP, LISTING, "build/*"),  # build/: generated sources, objects
    extra_sources=(*MCU_SOURCES, "engine/bitmcu.c", "engine/bitmcu.h"),
)


def elf(entry: Path) -> Path:
    return entry / ELF


def binary(entry: Path) -> Path:
    """The image a programmer writes at 0x08000000."""
    return entry / BIN


def target(entry: Path) -> str:
    return summary(entry)["target"]
