"""Instructions and estimated cycles per inference on the chip, from the emulator (mcu/emulator.py).

    ./run python benchmarks/firmware_cycles.py [--presets default fp130 fc1k cnn32] [--images 2]
                                               [--cnn-images 8]

For each preset (its trained model comes from the store; missing stages are built first with doit), the
demo firmware is built for the preset's chip (FC presets for the CH32V002 too, which multiplies) with the
reference kernels (BM_CFG_KERNELS=0, the row-by-row decoders and, for convs, gathered windows) and the
fast ones (1, the default), each with kernels in SRAM and in flash, and run on the first test images
(--images, --cnn-images for a CNN: its run time depends on its image, CONTRACT §6 "Streaming";
benchmarks/cnn_cycles.py gives the spread over many). Prints instructions and cycles per inference, cycles per weight, the
hot loops' cycles per weight, and the firmware's flash and RAM use.

For a CNN it then runs the first test image that takes one pass over the conv layers (refimpl/stream.py
counts them), and its conv kernels' cycles divided by the pass's multiply-accumulates (conv1 and the
depthwise layers, a pool's dropped odd row and column not computed) give the conv cycles per MAC.

Cycle figures are the documented per-class model (mcu/cycles.py), about 5-10% from hardware. BitNetMCU's
hardware figures for comparison are printed beside them.
"""
import argparse
import itertools
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from contract.model import PackedModel
from mcu.analysis import FirmwareError
from mcu.build import Firmware, build
from mcu.emulator import Emulator
from pipeline import config
from pipeline.stage import summary
from pipeline.stages import export
from pipeline.stages.data import mnist_test
from refimpl import stream

BITNETMCU = {  # BitNetMCU's README: measured on boards at 48 MHz
    "default": "BitNetMCU 64/64/64 4bitsym on CH32V003: 653,965 cycles (kernel in SRAM), 903,209 (flash); "
               "on CH32V002 with mul 508,605",
    "fp130": "BitNetMCU FP130 on CH32V003: about 488,000 cycles (10.17 ms)",
    "fc1k": "BitNetMCU 16/16 2bitsym: about 90,000 cycles (99,783 on CH32V002)",
    "cnn32": "BitNetMCU CNN-32 on CH32V002: 1,434,667 cycles (29.9 ms)",
}
HOT = ("bm__rows", "bm__dot", "bm__fc_", "bm_conv3x3", "bm__conv")
CONV = ("bm__conv", "bm_conv3x3")   # the conv kernels; without a multiplier also the row dot products they call

ap = argparse.ArgumentParser()
ap.add_argument("--presets", nargs="+", default=["default", "fp130", "fc1k", "cnn32"])
ap.add_argument("--images", type=int, default=2)
ap.add_argument("--cnn-images", type=int, default=8)
args = ap.parse_args()


def conv_macs(model: PackedModel) -> int:
    """Multiply-accumulates of one pass over the conv layers, as the C engine computes them."""
    macs = 0
    for lay in model.layers:
        if lay.kind == "fc":
            continue
        _, h, w = lay.in_shape
        h, w = h - 2, w - 2
        if lay.pool:
            h, w = h - h % 2, w - w % 2
        macs += lay.n_out * h * w * lay.n_in
    return macs


def emulate(fw: Firmware, model: PackedModel, images: np.ndarray, labels: np.ndarray, kernels: int, tmp: str):
    b = build(fw, model, Path(tmp), images, labels, gate=False, engine_options=[f"BM_CFG_KERNELS={kernels}"])
    b.check()
    emu = Emulator(b.elf, fw.target, profile=True)
    assert emu.run() == "halt", bytes(emu.tx)
    return b, emu


def between(emu: Emulator, i: int, prefixes: tuple[str, ...]) -> float:
    """Cycles of the functions named with prefixes during inference i (between its two marks)."""
    a, z = emu.mark_profiles[2 * i], emu.mark_profiles[2 * i + 1]
    return sum(v[1] - a.get(k, (0, 0.0))[1] for k, v in z.items() if k.startswith(prefixes))


for preset in args.presets:
    cfg = config.load(f"configs/{preset}.yaml")
    run = Path("artifacts/runs") / cfg.name
    if subprocess.run([sys.executable, "-m", "doit", f"cfg=configs/{preset}.yaml", "export"],
                      capture_output=True, text=True).returncode != 0:
        print(f"{preset}: could not build its export stage (`./run doit cfg=configs/{preset}.yaml export`)")
        continue
    model = export.model(run / "export")
    weights = summary(run / "export")["weights"]
    cnn = model.kind == "cnn"
    n_img = args.cnn_images if cnn else args.images
    test_images, test_labels = mnist_test(run / "data")
    images, labels = test_images[:n_img], test_labels[:n_img]
    print(f"\n== {preset}: {weights:,} weights, formats {', '.join(cfg['quant.formats'])}, "
          f"mean of the first {len(images)} test images")
    print(f"   {BITNETMCU.get(preset, '')}")
    print(f"   {'chip':9} {'kernels':10} {'code in':7} {'instr':>9} {'cycles':>10} {'ms':>6} {'cyc/w':>6} "
          f"{'hot cyc/w':>9} {'flash B':>8} {'RAM B':>6}")
    targets = [cfg["mcu.target"]] + (["ch32v002"] if cfg["mcu.target"] == "ch32v003" else [])
    for target, kernels, place in itertools.product(targets, (0, 1), ("sram", "flash")):
        name = ("reference", "fast")[kernels]
        with tempfile.TemporaryDirectory() as tmp:
            fw = Firmware(target=target, kernels=place, where=f"benchmark {preset}")
            try:
                b, emu = emulate(fw, model, images, labels, kernels, tmp)
            except FirmwareError as e:
                print(f"   {target:9} {name:10} {place:7} does not fit: {str(e).splitlines()[0]}")
                continue
            m = emu.marks
            instr = np.mean([m[2 * i + 1][0] - m[2 * i][0] for i in range(len(images))])
            cyc = np.mean([m[2 * i + 1][1] - m[2 * i][1] for i in range(len(images))])
            hot = sum(v[1] for k, v in emu.profile.items() if k.startswith(HOT)) / len(images)
            print(f"   {target:9} {name:10} {place:7} {instr:9,.0f} {cyc:10,.0f} {cyc / 48e3:6.2f} {cyc / weights:6.2f} "
                  f"{hot / weights:9.2f} {b.sizes.flash_used:8,} {b.sizes.ram_used:6,}")
    if not cnn:
        continue
    macs = conv_macs(model)
    one = next(i for i, img in enumerate(test_images)
               if stream.run(model, img, stream.new_feat(model))["passes"] == 1)
    print(f"   one pass over the conv layers ({macs:,} MACs): test image {one}")
    print(f"   {'chip':9} {'kernels':10} {'code in':7} {'cycles':>10} {'ms':>6} {'conv cycles':>11} {'conv cyc/MAC':>12}")
    for kernels, place in itertools.product((0, 1), ("sram", "flash")):
        name = ("reference", "fast")[kernels]
        with tempfile.TemporaryDirectory() as tmp:
            fw = Firmware(target=cfg["mcu.target"], kernels=place, where=f"benchmark {preset}")
            try:
                b, emu = emulate(fw, model, test_images[[one]], test_labels[[one]], kernels, tmp)
            except FirmwareError as e:
                print(f"   {cfg['mcu.target']:9} {name:10} {place:7} does not fit: {str(e).splitlines()[0]}")
                continue
            cyc = emu.marks[1][1] - emu.marks[0][1]
            mul = cfg["mcu.target"] != "ch32v003"
            if not mul and kernels == 0:   # bm__dot_* serve the fc layers too: not separable
                print(f"   {cfg['mcu.target']:9} {name:10} {place:7} {cyc:10,.0f} {cyc / 48e3:6.2f}")
                continue
            conv = between(emu, 0, CONV if mul else CONV + ("bm__dot",))
            print(f"   {cfg['mcu.target']:9} {name:10} {place:7} {cyc:10,.0f} {cyc / 48e3:6.2f} {conv:11,.0f} "
                  f"{conv / macs:12.2f}")
