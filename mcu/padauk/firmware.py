"""Padauk demo firmware for the pipeline's firmware stage: the SDCC engine (mcu/padauk/sim.py's build) with
the first test images embedded, as many as fit in ROM for mcu.demo_images 0 (mcu/fit.py), gated on ROM words
and RAM bytes (the stack reserved: the emulate stage measures it); and the figures of its summary.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from contract.model import PackedModel
from mcu.fit import demo_build
from mcu.padauk import sim


def build_demo(model: PackedModel, images: np.ndarray, target: str, out: Path, count: int, where: str) -> sim.Build:
    """The gated build in out of model with the first `count` images (0: as many as fit in ROM)."""
    b = demo_build(lambda n: sim.build(model, images[:n], target, out, gate=False),
                   lambda x: x.chip.rom_words - x.rom_words(), model.image_size ** 2, len(images), count, where,
                   sim.PadaukError)
    b.check()
    return b


def summary(b: sim.Build) -> dict[str, Any]:
    """ROM words, RAM bytes (stack reserved) and images embedded, with the size table's rows."""
    rows = b.size_report()
    total = {mem: used for mem, what, used, _ in rows if what == "total"}
    return dict(target=b.target, family="padauk", mode="demo", rom_words=total["ROM words"],
                rom_limit=b.chip.rom_words, ram_used=total["RAM bytes"], ram_limit=b.chip.ram,
                stack_reserved=sim.STACK_RESERVE, images=b.n_images, image_words=b.image_bytes,
                acc_bits=b.layout.acc_bits,
                sizes=[dict(memory=mem, what=what, used=used) for mem, what, used, _ in rows])
