"""Firmware stage: cross-compile the CH32V00x firmware for the exported model, gate its size.

Builds mcu/src with engine/bitmcu.c and the export's model.h (mcu/build.py): `demo` embeds the
first mcu.demo_images test images (0 = as many as fit in flash) and prints a line per image;
`serial` classifies images sent over USART1 (mcu/protocol.py). Fails with a table when flash or
RAM does not fit, and on the CH32V003 when the inference code contains a multiply or divide.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from contract.model import PackedModel
from mcu.build import Build, Firmware, build, build_demo
from pipeline.stages.data import mnist_test
from pipeline.stages.export import model as exported_model


def settings(cfg: Mapping[str, Any], where: str) -> Firmware:
    """What the config's mcu.* keys ask the firmware build for."""
    return Firmware(target=cfg["mcu.target"], mode=cfg["mcu.mode"], kernels=cfg["mcu.kernels"],
                    segment_pins=tuple(cfg["mcu.segment_pins"]), segment_active_low=cfg["mcu.segment_active_low"],
                    where=where)


def gated_build(cfg: Mapping[str, Any], fw: Firmware, model: PackedModel, out: Path, images: np.ndarray,
                labels: np.ndarray) -> Build:
    """Build and gate the firmware for the model: demo mode embeds the first mcu.demo_images of images."""
    if fw.mode == "demo":
        return build_demo(fw, model, out, images, labels, cfg["mcu.demo_images"])
    return build(fw, model, out)


def run(ctx) -> dict:
    fw = settings(ctx.cfg, f"config of stage {ctx.stage.name}")
    b = gated_build(ctx.cfg, fw, exported_model(ctx.input("export")), ctx.out, *mnist_test(ctx.input("data")))
    s = b.summary(ctx.out)
    ctx.log(f"{fw.target} {fw.mode}, kernels in {fw.kernels}: flash {s['flash_used']} of {s['flash_limit']} B, "
            f"RAM {s['ram_used']} of {s['ram_limit']} B (stack bound {s['stack_bound']} B), "
            f"{s['images']} demo images, no-multiply scan {s['no_multiply_scan']}")
    return s
