"""Firmware stage: cross-compile the CH32V00x firmware for the exported model, gate its size.

Builds mcu/src with engine/bitmcu.c and the export's model.h (mcu/build.py): `demo` embeds the
first mcu.demo_images test images (0 = as many as fit in flash) and prints a line per image;
`serial` classifies images sent over USART1 (mcu/protocol.py). Fails with a table when flash or
RAM does not fit, and on the CH32V003 when the inference code contains a multiply or divide.
"""
from __future__ import annotations

from mcu.build import Firmware, build, build_demo
from pipeline.stages.data import mnist_test
from pipeline.stages.export import model as exported_model


def run(ctx) -> dict:
    cfg = ctx.cfg
    fw = Firmware(target=cfg["mcu.target"], mode=cfg["mcu.mode"], kernels=cfg["mcu.kernels"],
                  segment_pins=tuple(cfg["mcu.segment_pins"]), segment_active_low=cfg["mcu.segment_active_low"],
                  where=f"config of stage {ctx.stage.name}")
    model = exported_model(ctx.input("export"))
    if fw.mode == "demo":
        images, labels = mnist_test(ctx.input("data"))
        b = build_demo(fw, model, ctx.out, images, labels, cfg["mcu.demo_images"])
    else:
        b = build(fw, model, ctx.out)
    s = b.summary(ctx.out)
    ctx.log(f"{fw.target} {fw.mode}, kernels in {fw.kernels}: flash {s['flash_used']} of {s['flash_limit']} B, "
            f"RAM {s['ram_used']} of {s['ram_limit']} B (stack bound {s['stack_bound']} B), "
            f"{s['images']} demo images, no-multiply scan {s['no_multiply_scan']}")
    return s
