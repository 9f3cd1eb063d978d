"""Instructions and estimated cycles per inference on the chip, from the emulator (mcu/emulator.py).

    ./run python benchmarks/firmware_cycles.py [--presets default fp130 fc1k cnn64_short]

For each preset (its trained model comes from the store; missing stages are built first with doit), the
demo firmware is built for the preset's chip (FC presets for the CH32V002 too, which multiplies) with the
reference kernels (BM_CFG_KERNELS=0, the row-by-row decoders) and the
fast ones (1, the default), each with kernels in SRAM and in flash, and run on 2 test images. Prints
instructions and cycles per inference, cycles per weight, the hot loops' cycles per weight, and the
firmware's flash and RAM use. Cycle figures are the documented per-class model (mcu/cycles.py), about
5-10% from hardware. BitNetMCU's hardware figures for comparison are printed beside them.
"""
import argparse
import itertools
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from mcu.analysis import FirmwareError
from mcu.build import Firmware, build
from mcu.emulator import Emulator
from pipeline import config

BITNETMCU = {  # ../shared/reference: measured on boards at 48 MHz
    "default": "BitNetMCU 64/64/64 4bitsym on CH32V003: 653,965 cycles (kernel in SRAM), 903,209 (flash); "
               "on CH32V002 with mul 508,605",
    "fp130": "BitNetMCU FP130 on CH32V003: about 488,000 cycles (10.17 ms)",
    "fc1k": "BitNetMCU 16/16 2bitsym: about 90,000 cycles (99,783 on CH32V002)",
    "cnn32": "BitNetMCU CNN-32 on CH32V002: 1,434,667 cycles (29.9 ms)",
}
HOT = ("bm__rows", "bm__dot", "bm__fc_", "bm_conv3x3")

ap = argparse.ArgumentParser()
ap.add_argument("--presets", nargs="+", default=["default", "fp130", "fc1k", "cnn32"])
ap.add_argument("--images", type=int, default=2)
args = ap.parse_args()

for preset in args.presets:
    cfg = config.load(f"configs/{preset}.yaml")
    run = Path("artifacts/runs") / cfg.name
    if subprocess.run([sys.executable, "-m", "doit", f"cfg=configs/{preset}.yaml", "export"],
                      capture_output=True, text=True).returncode != 0:
        print(f"{preset}: could not build its export stage (`./run doit cfg=configs/{preset}.yaml export`)")
        continue
    header = (run / "export" / "model.h").read_text()
    weights = json.loads((run / "export" / "summary.json").read_text())["weights"]
    images = np.load(run / "data" / "test_images.npy")[:args.images]
    labels = np.load(run / "data" / "test_labels.npy")[:args.images]
    print(f"\n== {preset}: {weights:,} weights, formats {', '.join(cfg['quant.formats'])}")
    print(f"   {BITNETMCU.get(preset, '')}")
    print(f"   {'chip':9} {'kernels':10} {'code in':7} {'instr':>9} {'cycles':>10} {'ms':>6} {'cyc/w':>6} "
          f"{'hot cyc/w':>9} {'flash B':>8} {'RAM B':>6}")
    targets = [cfg["mcu.target"]] + (["ch32v002"] if cfg["mcu.target"] == "ch32v003" else [])
    for target, kernels, place in itertools.product(targets, (0, 1), ("sram", "flash")):
        name = ("reference", "fast")[kernels]
        with tempfile.TemporaryDirectory() as tmp:
            fw = Firmware(target=target, kernels=place, where=f"benchmark {preset}")
            try:
                b = build(fw, header, Path(tmp), images, labels, gate=False,
                          engine_options=[f"BM_CFG_KERNELS={kernels}"])
                b.check()
            except FirmwareError as e:
                print(f"   {target:9} {name:10} {place:7} does not fit: {str(e).splitlines()[0]}")
                continue
            emu = Emulator(b.elf, target, profile=True)
            assert emu.run() == "halt", bytes(emu.tx)
            m = emu.marks
            instr = np.mean([m[2 * i + 1][0] - m[2 * i][0] for i in range(len(images))])
            cyc = np.mean([m[2 * i + 1][1] - m[2 * i][1] for i in range(len(images))])
            hot = sum(v[1] for k, v in emu.profile.items() if k.startswith(HOT)) / len(images)
            print(f"   {target:9} {name:10} {place:7} {instr:9,.0f} {cyc:10,.0f} {cyc / 48e3:6.2f} {cyc / weights:6.2f} "
                  f"{hot / weights:9.2f} {b.sizes.flash_used:8,} {b.sizes.ram_used:6,}")
