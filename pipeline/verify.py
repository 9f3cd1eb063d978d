"""Verify stage: PyTorch's integer path, the numba engine and the C engine must agree on every layer.

All three run over every test image; every activation (input map, each requantized layer, the
logits) and every ShiftNorm shift is compared. Any difference fails the stage, naming the image,
the layer, the index and both values.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from contract.errors import UserError
from engine.build import load_library, run_c
from pipeline.stages import export, library
from pipeline.stages.data import mnist_test
from pipeline.stages.train import trained_model
from refimpl.model import run as run_numba

SHOW = 10  # mismatches printed in full


class VerifyError(UserError):
    pass


def torch_int(model: torch.nn.Module, pixels: np.ndarray, batch: int = 1000) -> dict[str, Any]:
    parts = [model.int_eval(torch.from_numpy(pixels[i:i + batch])) for i in range(0, len(pixels), batch)]
    acts = [(name, np.concatenate([p.acts[j][1].numpy() for p in parts]))
            for j, (name, _) in enumerate(parts[0].acts)]
    shifts = [(name, np.concatenate([p.shifts[j][1].numpy() for p in parts]))
              for j, (name, _) in enumerate(parts[0].shifts)]
    logits = np.concatenate([p.logits.numpy() for p in parts])
    return dict(logits=logits, preds=logits.argmax(1), acts=acts, shifts=shifts)


def engines(train_dir: Path, export_dir: Path, library_dir: Path) -> dict[str, Callable[[np.ndarray], dict]]:
    """The three implementations of the contract, each mapping uint8 images [B,N,N] to a traced run."""
    model = trained_model(train_dir)
    packed = export.model(export_dir)
    lib = load_library(library.library(library_dir))
    return {"torch": lambda p: torch_int(model, p),
            "numba": lambda p: run_numba(packed, p),
            "c": lambda p: run_c(lib, p, trace=True)}


def compare(ref: dict[str, Any], other: dict[str, Any], ref_name: str, other_name: str) -> tuple[int, list[str]]:
    """(number of differing values, descriptions of the first few), over activations and shifts."""
    total, lines = 0, []
    for kind in ("acts", "shifts"):
        a_list, b_list = ref[kind], other[kind]
        if [n for n, _ in a_list] != [n for n, _ in b_list]:
            raise VerifyError(f"{other_name}: {kind} layers {[n for n, _ in b_list]} differ from "
                              f"{ref_name}'s {[n for n, _ in a_list]}")
        for (name, a), (_, b) in zip(a_list, b_list):
            a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
            if a.shape != b.shape:
                raise VerifyError(f"{other_name}: layer {name} has shape {b.shape}, {ref_name} {a.shape}")
            diff = np.argwhere(a != b)
            total += len(diff)
            for pos in diff[:max(0, SHOW - len(lines))]:
                img, idx = int(pos[0]), tuple(int(i) for i in pos[1:])
                what = "shift" if kind == "shifts" else f"index {idx}"
                lines.append(f"image {img}, layer {name}, {what}: {ref_name} {a[tuple(pos)]}, "
                             f"{other_name} {b[tuple(pos)]}")
    return total, lines


def run(ctx) -> dict:
    pixels, labels = mnist_test(ctx.input("data"))
    results, seconds = {}, {}
    for name, fn in engines(ctx.input("train"), ctx.input("export"), ctx.input("library")).items():
        t0 = time.perf_counter()
        results[name] = fn(pixels)
        seconds[name] = round(time.perf_counter() - t0, 3)
        ctx.log(f"{name}: {len(pixels)} images in {seconds[name]:.2f} s")
    accuracy = {n: float((r["preds"] == labels).mean()) for n, r in results.items()}
    mismatches, report = {}, []
    for other in ("numba", "c"):
        count, lines = compare(results["torch"], results[other], "torch", other)
        mismatches[f"torch_vs_{other}"] = count
        report += lines
    layers = [n for n, _ in results["torch"]["acts"]]
    print(f"verify: {len(pixels)} test images, layers {', '.join(layers)}")
    for n in results:
        print(f"  {n:<6} accuracy {accuracy[n] * 100:.2f}%  ({seconds[n]:.2f} s)")
    for k, v in mismatches.items():
        print(f"  {k}: {v} mismatching values")
    if any(mismatches.values()):
        raise VerifyError("engines disagree:\n  " + "\n  ".join(report) +
                          f"\n  ({sum(mismatches.values())} mismatching values in all)")
    return {"images": len(pixels), "accuracy": accuracy, "mismatches": mismatches, "seconds": seconds,
            "layers_compared": layers}
