"""Cycles per inference of a CNN over many test images, from serial firmware in the emulator.

    ./run python benchmarks/cnn_cycles.py RUN_FOLDER [--images 200] [--limit 3000000]

RUN_FOLDER is a run with export, library and firmware stages built (e.g. artifacts/runs/best_ch32v003 after
`./run doit cfg=configs/best_ch32v003.yaml firmware`); the chip and the kernels' place are its firmware's. The streaming CNN's time depends on its image (CONTRACT §6,
"Streaming": the passes it takes to settle its shifts), so the demo firmware's few embedded images do not show
the spread: this builds the run's serial firmware, sends it the first --images test images as IMAGE frames
(mcu/protocol.py), checks each answer against the host C engine, and prints the distribution of the estimated
cycles (mcu/cycles.py) with the share of images above --limit, beside the passes refimpl/stream.py counts.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from engine.build import load_library, run_c
from mcu import protocol
from mcu.analysis import FirmwareError
from mcu.build import Firmware, build, placement
from mcu.emulator import Emulator
from pipeline.stage import summary
from pipeline.stages import export, library
from pipeline.stages.data import mnist_test
from refimpl import stream

ap = argparse.ArgumentParser()
ap.add_argument("run", type=Path)
ap.add_argument("--images", type=int, default=200)
ap.add_argument("--limit", type=int, default=3_000_000)
args = ap.parse_args()

model = export.model(args.run / "export")
if model.kind != "cnn":
    raise SystemExit(f"{args.run}: an {model.kind} model; this benchmark is for a CNN")
fw = summary(args.run / "firmware")
target, kernels = fw["target"], fw["kernels"]
lib = load_library(library.library(args.run / "library"))
images, labels = (a[:args.images] for a in mnist_test(args.run / "data"))
with tempfile.TemporaryDirectory() as tmp:
    b = build(Firmware(target=target, mode="serial", kernels=kernels, where=str(args.run)), model, Path(tmp),
              gate=False)
    try:
        b.check()
    except FirmwareError as e:   # the emulator maps at least 4 KiB of SRAM; answers are checked all the same
        print(f"note: the serial firmware does not pass the {target}'s size gate ({str(e).splitlines()[0]}); "
              "it runs in the emulator regardless, with the demo firmware's engine code")
    want = run_c(lib, images, trace=False)
    emu = Emulator(b.elf, target)
    assert emu.run() == "idle", "serial firmware did not wait for input"
    parser, seen, cycles = protocol.Parser(), 0, []
    for i, img in enumerate(images):
        emu.feed(protocol.image_frame(img))
        assert emu.run() == "idle", f"no answer to image {i}"
        got = parser.feed(bytes(emu.tx[seen:]))
        seen = len(emu.tx)
        r = got[0]
        assert r.cls == want["preds"][i] and r.logits == tuple(int(v) for v in want["logits"][i]), i
        cycles.append(r.cycles)
        if (i + 1) % 25 == 0:
            print(f"  {i + 1} of {len(images)} images", flush=True)
passes = np.array([stream.run(model, img, stream.new_feat(model))["passes"] for img in images])
c = np.array(cycles, dtype=np.float64)
print(f"{args.run.name}: {target}, {placement(kernels, b.sram_functions)}, {len(c)} test images, "
      "emulated = C engine on every one")
print(f"  estimated cycles: mean {c.mean():,.0f}, median {np.median(c):,.0f}, p90 {np.percentile(c, 90):,.0f}, "
      f"p99 {np.percentile(c, 99):,.0f}, min {c.min():,.0f}, max {c.max():,.0f}")
print(f"  above {args.limit:,}: {(c > args.limit).sum()} of {len(c)} ({100 * (c > args.limit).mean():.1f}%)")
print("  passes over the conv layers (refimpl): " + ", ".join(f"{k}: {(passes == k).sum()}"
                                                                for k in sorted(set(passes.tolist()))))
