"""Emulate stage: run the built firmware in mcu/emulator.py and hold it to the C engine.

Demo firmware runs to its end; every printed prediction must equal the host C engine's (the library
stage, the same engine code) for the same embedded test images, and the two SysTick reads around each
inference give its exact instruction count and estimated cycles (mcu/cycles.py). Serial firmware gets
the first SERIAL_IMAGES test images as IMAGE frames (mcu/protocol.py); class and every logit must equal
the C engine's, and its RESULT frames carry the cycles.

Padauk demo firmware runs in ucsim's `spdk` (mcu/padauk/sim.py), which stops after every embedded image:
its class and every logit must equal the C engine's (a table of the images that differ fails the stage). Where
the ROM holds fewer than PADAUK_CHECK_IMAGES images, the same firmware is rebuilt with the next ones in their
place. The measured stack must fit the RAM, and the simulator's ticks per image give the cycles per inference.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from contract.chips import CHIPS
from contract.errors import UserError
from engine.build import load_library, run_c
from mcu import protocol
from mcu.build import placement
from mcu.emulator import Emulator
from mcu.padauk import sim
from pipeline.stage import summary
from pipeline.stages import firmware, library
from pipeline.stages.data import mnist_test
from pipeline.stages.export import model as exported_model

SERIAL_IMAGES = 10
PADAUK_CHECK_IMAGES = 16   # test images a Padauk run compares with the C engine, rebuilding when the ROM holds fewer
CHUNK = 20_000_000         # instructions per emulator call between progress checks
STALL = 200_000_000        # instructions without a new result line: the firmware counts as hung
LINE = re.compile(r"img (\d+) pred (\d+) label (\d+) cycles (\d+)")


class EmulateError(UserError):
    pass


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": round(float(np.mean(values)), 1), "min": round(float(np.min(values)), 1),
            "max": round(float(np.max(values)), 1)}


def _run_demo(emu: Emulator, n: int, log) -> str:
    """Run the demo firmware to its end in chunks, logging progress; a firmware that prints no new result line
    for STALL instructions is stopped (a CNN's inference takes millions, so no fixed total limit fits all)."""
    done, stalled = 0, 0
    while (reason := emu.run(CHUNK)) == "limit":
        now = bytes(emu.tx).count(b"\r\nimg ")
        stalled = 0 if now > done else stalled + CHUNK
        if stalled >= STALL:
            break
        if now > done:
            log(f"{now} of {n} images")
        done = now
    return reason


def _demo(emu: Emulator, fw: dict[str, Any], images: np.ndarray, labels: np.ndarray, lib, log) -> dict[str, Any]:
    n = int(fw["images"])
    reason = _run_demo(emu, n, log)
    text = bytes(emu.tx).decode("ascii", errors="replace")
    if reason != "halt":
        why = f"no new result line in {STALL:,} instructions" if reason == "limit" else reason
        raise EmulateError(f"demo firmware did not finish ({why}); its output:\n{text}")
    rows = [LINE.fullmatch(line) for line in text.split("\r\n")[1:n + 1]]
    if len(rows) != n or not all(rows) or [int(r.group(1)) for r in rows] != list(range(n)):
        raise EmulateError(f"demo output does not have one line per image (expected {n}):\n{text}")
    preds = np.array([int(r.group(2)) for r in rows])
    if not np.array_equal(np.array([int(r.group(3)) for r in rows]), labels[:n]):
        raise EmulateError("demo firmware printed labels that are not the test set's first labels")
    want = run_c(lib, images[:n], trace=False)["preds"]
    bad = np.flatnonzero(preds != want)
    if bad.size:
        i = int(bad[0])
        raise EmulateError(f"emulated firmware predicts {preds[i]} for test image {i}, the C engine {want[i]} "
                           f"({bad.size} of {n} images differ)")
    if len(emu.marks) != 2 * n:
        raise EmulateError(f"expected 2 SysTick reads per inference, saw {len(emu.marks)} for {n} images")
    instr = [emu.marks[2 * i + 1][0] - emu.marks[2 * i][0] for i in range(n)]
    cycles = [emu.marks[2 * i + 1][1] - emu.marks[2 * i][1] for i in range(n)]
    printed = [int(r.group(4)) for r in rows]
    if any(abs(p - c) > 1 for p, c in zip(printed, cycles)):  # the firmware reads the same clock
        raise EmulateError(f"printed cycles {printed} differ from the emulator's {cycles}")
    return dict(images=n, correct=int((preds == labels[:n]).sum()), instructions=_stats(instr),
                cycles=_stats(cycles))


def _serial(emu: Emulator, images: np.ndarray, labels: np.ndarray, lib) -> dict[str, Any]:
    if emu.run() != "idle":
        raise EmulateError("serial firmware did not wait for input after boot")
    want = run_c(lib, images, trace=False)
    parser, seen, cycles, instr, correct = protocol.Parser(), 0, [], [], 0
    for i, img in enumerate(images):
        before = emu.instructions
        emu.feed(protocol.image_frame(img))
        if emu.run() != "idle":
            raise EmulateError(f"serial firmware did not come back for input after image {i}")
        got = parser.feed(bytes(emu.tx[seen:]))
        seen = len(emu.tx)
        if len(got) != 1 or not isinstance(got[0], protocol.Result):
            raise EmulateError(f"serial firmware answered image {i} with {got!r}, not one RESULT frame")
        r = got[0]
        if r.cls != want["preds"][i] or r.logits != tuple(int(v) for v in want["logits"][i]):
            raise EmulateError(f"test image {i}: emulated firmware gives class {r.cls} logits {r.logits}, "
                               f"the C engine {want['preds'][i]} {tuple(want['logits'][i])}")
        cycles.append(r.cycles)
        instr.append(emu.instructions - before)
        correct += int(r.cls == labels[i])
    return dict(images=len(images), correct=correct, cycles=_stats(cycles),
                instructions_per_frame=_stats(instr))


def _mismatch_table(idx: np.ndarray, labels: np.ndarray, got: sim.Result, want: dict[str, np.ndarray]) -> str:
    lines = [f"  {'image':>5} {'label':>5} {'spdk':>4} {'C':>4}  logits spdk / C"]
    lines += [f"  {i:>5} {labels[i]:>5} {got.preds[i]:>4} {want['preds'][i]:>4}  {got.logits[i].tolist()} / "
              f"{want['logits'][i].tolist()}" for i in idx[:20]]
    return "\n".join(lines + ([f"  ... and {idx.size - 20} more"] if idx.size > 20 else []))


def _padauk(ctx, fw: dict[str, Any], images: np.ndarray, labels: np.ndarray, lib, weights: int) -> dict:
    model = exported_model(ctx.input("export"))
    n = int(fw["images"])
    b = sim.load(firmware.build_dir(ctx.input("firmware")), model, fw["target"], n)
    ctx.log(f"running the {fw['target']} demo firmware ({n} test images) in spdk")
    runs = [sim.run(b, model.num_classes)]
    # the ROM may hold a single image: the same engine and model, rebuilt with the next images in its place
    # (same sizes, so the same code and layout), until PADAUK_CHECK_IMAGES have been compared
    with tempfile.TemporaryDirectory() as tmp:
        for start in range(n, min(PADAUK_CHECK_IMAGES, len(images)), n):
            more = sim.build(model, images[start:start + n], fw["target"], Path(tmp) / str(start))
            runs.append(sim.run(more, model.num_classes))
    m = sum(len(r.preds) for r in runs)
    if len(runs) > 1:
        ctx.log(f"and {m - n} more test images in {len(runs) - 1} rebuilds with the images replaced")
    got = sim.Result(*(np.concatenate([getattr(r, f) for r in runs]) for f in ("preds", "logits", "ticks")),
                     startup_ticks=runs[0].startup_ticks, stack_bytes=max(r.stack_bytes for r in runs),
                     ram_used=max(r.ram_used for r in runs))
    want = run_c(lib, images[:m], trace=False)
    bad = np.flatnonzero((got.preds != want["preds"]) | (got.logits != want["logits"]).any(axis=1))
    if bad.size:
        raise EmulateError(f"{fw['target']} in spdk: {bad.size} of {m} images differ from the C engine "
                           f"(class or logits):\n{_mismatch_table(bad, labels, got, want)}")
    clock = CHIPS[fw["target"]].clock_hz
    ticks = _stats(got.ticks.tolist())
    correct = int((got.preds == labels[:m]).sum())
    res = dict(images=m, embedded_images=n, correct=correct, accuracy=round(correct / m, 4), predictions_match=True,
               target=fw["target"], mode="demo", weights=weights, ticks=ticks, cycles=ticks,
               cycles_per_weight=round(ticks["mean"] / weights, 2), clock_hz=clock,
               ms_per_inference=round(ticks["mean"] / (clock / 1000), 3), startup_ticks=got.startup_ticks,
               stack_bytes=got.stack_bytes, ram_used=got.ram_used, ram_limit=CHIPS[fw["target"]].ram)
    ctx.log(f"{m} images, classes and logits equal the C engine's; {ticks['mean']:,.0f} ticks per inference "
            f"(min {ticks['min']:,.0f}, max {ticks['max']:,.0f}; {res['ms_per_inference']} ms at "
            f"{clock / 1e6:g} MHz), {correct} of {m} correct, RAM {got.ram_used} of {res['ram_limit']} B with the "
            f"measured stack ({got.stack_bytes} B)")
    return res


def run(ctx) -> dict:
    fw = summary(ctx.input("firmware"))
    images, labels = mnist_test(ctx.input("data"))
    lib = load_library(library.library(ctx.input("library")))
    weights = int(summary(ctx.input("export"))["weights"])
    if CHIPS[fw["target"]].family == "padauk":
        return _padauk(ctx, fw, images, labels, lib, weights)
    emu = Emulator(firmware.elf(ctx.input("firmware")), fw["target"], profile=True)
    where = placement(fw["kernels"], fw["sram_functions"])
    ctx.log(f"running {fw['mode']} firmware for {fw['target']} ({where}) in the emulator")
    if fw["mode"] == "demo":
        res = _demo(emu, fw, images, labels, lib, ctx.log)
    else:
        res = _serial(emu, images[:SERIAL_IMAGES], labels[:SERIAL_IMAGES], lib)
    c = res["cycles"]["mean"]
    n = res["images"]
    top = sorted(emu.profile.items(), key=lambda kv: -kv[1][1])[:8]
    res.update(
        predictions_match=True, target=fw["target"], mode=fw["mode"], kernels=fw["kernels"], weights=weights,
        cycles_per_weight=round(c / weights, 2), ms_at_48mhz=round(c / (CHIPS[fw["target"]].clock_hz / 1000), 3),
        firmware_instructions=emu.instructions, firmware_cycles=round(emu.cycles),
        flash_data_loads=emu.flash_loads,
        functions_per_inference={name: {"instructions": round(v[0] / n), "cycles": round(v[1] / n)}
                                 for name, v in top},
    )
    if "instructions" in res:
        res["instructions_per_weight"] = round(res["instructions"]["mean"] / weights, 2)
    ctx.log(f"{n} images, predictions equal the C engine's; {c:,.0f} estimated cycles per inference "
            f"({res['ms_at_48mhz']} ms at 48 MHz, {res['cycles_per_weight']} per weight)")
    return res
