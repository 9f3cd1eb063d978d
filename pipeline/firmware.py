"""Firmware stage: build the chip's firmware for the exported model, gate its size; one backend per family.

RISC-V (CH32V00x): builds mcu/src with engine/bitmcu.c and the export's model.h (mcu/build.py): `demo` embeds
the first mcu.demo_images test images (0 = as many as fit in flash) and prints a line per image; `serial`
classifies images sent over USART1 (mcu/protocol.py). Fails with a table when flash or RAM does not fit, and
on the CH32V003 when the inference code contains a multiply or divide.

Padauk (PMS150C, PFS154): builds the SDCC engine and its demo loop (mcu/padauk/firmware.py) with the test
images in ROM, as many as fit for mcu.demo_images 0; fails with a table when ROM words or RAM bytes (the
stack reserved) do not fit. firmware.ihx is what a programmer writes.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from contract.chips import CHIPS
from contract.model import PackedModel
from mcu.build import Build, Firmware, build, build_demo, placement
from mcu.padauk import firmware as padauk
from mcu.padauk import sim
from pipeline.stages.data import mnist_test
from pipeline.stages.export import model as exported_model
from pipeline.stages.firmware import BUILD, IHX, MAP


def settings(cfg: Mapping[str, Any], where: str) -> Firmware:
    """What the config's mcu.* keys ask the RISC-V firmware build for."""
    return Firmware(target=cfg["mcu.target"], mode=cfg["mcu.mode"], kernels=cfg["mcu.kernels"],
                    segment_pins=tuple(cfg["mcu.segment_pins"]), segment_active_low=cfg["mcu.segment_active_low"],
                    where=where)


def gated_build(cfg: Mapping[str, Any], fw: Firmware, model: PackedModel, out: Path, images: np.ndarray,
                labels: np.ndarray) -> Build:
    """Build and gate the RISC-V firmware for the model: demo mode embeds the first mcu.demo_images of images."""
    if fw.mode == "demo":
        return build_demo(fw, model, out, images, labels, cfg["mcu.demo_images"])
    return build(fw, model, out)


def _riscv(ctx) -> dict:
    fw = settings(ctx.cfg, f"config of stage {ctx.stage.name}")
    b = gated_build(ctx.cfg, fw, exported_model(ctx.input("export")), ctx.out, *mnist_test(ctx.input("data")))
    s = b.summary(ctx.out)
    ctx.log(f"{fw.target} {fw.mode}, {placement(fw.kernels, s['sram_functions'])}: "
            f"flash {s['flash_used']} of {s['flash_limit']} B, "
            f"RAM {s['ram_used']} of {s['ram_limit']} B (stack bound {s['stack_bound']} B), "
            f"{s['images']} demo images, no-multiply scan {s['no_multiply_scan']}")
    return s


def _padauk(ctx) -> dict:
    images, _ = mnist_test(ctx.input("data"))
    b = padauk.build_demo(exported_model(ctx.input("export")), images, ctx.cfg["mcu.target"], ctx.out / BUILD,
                          ctx.cfg["mcu.demo_images"], f"config of stage {ctx.stage.name}")
    shutil.copy(b.ihx, ctx.out / IHX)
    shutil.copy(b.out / sim.MAP, ctx.out / MAP)
    s = padauk.summary(b)
    print(sim.format_table(b.size_report()), flush=True)
    ctx.log(f"{b.target} demo: ROM {s['rom_words']} of {s['rom_limit']} words, RAM {s['ram_used']} of "
            f"{s['ram_limit']} B (stack reserved {s['stack_reserved']} B), {s['images']} test images embedded")
    return s


def run(ctx) -> dict:
    return (_padauk if CHIPS[ctx.cfg["mcu.target"]].family == "padauk" else _riscv)(ctx)
