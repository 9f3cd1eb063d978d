"""Glue of the numba reference engine: check a packed model (contract/model.py), then walk its layers
with the kernels. `run` returns the activations and ShiftNorm shifts with the names, order, shapes and
values of `QModel.int_eval`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from contract.formats import FORMAT_IDS
from contract.model import PackedModel
from refimpl import kernels as K

CHUNK = 256           # images per pass: the int64 layer scratch (CHUNK*C*H*W*8 bytes) is reused

def _plan(model: PackedModel, b: int) -> tuple[list, list, list]:
    """Output arrays for B images (acts, shifts) and per-layer int64 scratch for one chunk."""
    n = int(model.image_size)
    acts = [("input", np.empty((b, 1, n, n) if model.kind == "cnn" else (b, n * n), dtype=np.int8))]
    shifts, scratch = [], []
    for lay in model.layers:
        out = tuple(int(v) for v in lay.out_shape)
        last = not lay.requant
        acts.append((lay.name, np.empty((b, *out), dtype=np.int64 if last else np.int8)))
        if not last:
            shifts.append((lay.name, np.empty(b, dtype=np.int64)))
        c = min(b, CHUNK)
        if lay.kind == "fc":
            scratch.append((np.empty((c, *out), dtype=np.int64), None))
        else:
            h, w = (int(v) - (lay.kind != "pwconv") * 2 for v in lay.in_shape[1:])
            conv = np.empty((c, out[0], h, w), dtype=np.int64)
            scratch.append((conv, np.empty((c, *out), dtype=np.int64) if lay.pool else None))
    return acts, shifts, scratch


def _run_chunk(model: PackedModel, pixels: np.ndarray, lo: int, acts: list, shifts: list,
               scratch: list) -> None:
    """Images lo .. lo + len(pixels) - 1: write their rows of acts and shifts."""
    b, n = pixels.shape[0], int(model.image_size)
    hi = lo + b
    x = acts[0][1][lo:hi]
    K.input(np.ascontiguousarray(pixels.reshape(b, n * n)), int(model.input_zero), x.reshape(b, n * n))
    for i, lay in enumerate(model.layers):
        fmt_id, k = FORMAT_IDS[lay.format], lay.out_shifts.astype(np.uint8)
        n_out, rw, relu = lay.n_out, lay.row_words, lay.requant
        conv, pool = scratch[i]
        y = acts[i + 1][1][lo:hi] if not relu else conv[:b]      # logits go straight to their output
        if lay.kind == "fc":
            K.fc(x.reshape(b, int(np.prod(x.shape[1:]))), lay.words, rw, fmt_id, n_out, k, relu, y)
        elif lay.kind == "pwconv":
            K.pointwise(x, lay.words, rw, fmt_id, n_out, k, relu, y)
        else:
            K.conv3x3(x, lay.words, rw, fmt_id, n_out, lay.groups, k, relu, y)
            if lay.pool:
                K.maxpool2(y, pool[:b])
                y = pool[:b]
        if not relu:                                        # final layer: logits, no requant
            return
        x = acts[i + 1][1][lo:hi]
        flat = int(np.prod(y.shape[1:]))
        K.shiftnorm(y.reshape(b, flat), x.reshape(b, flat), shifts[i][1][lo:hi])


def run(model: PackedModel, pixels: np.ndarray) -> dict[str, Any]:
    """Run a packed model (contract.model.from_export) on uint8 images [B, N, N].

    Returns logits int64 [B, classes], preds int64 [B] (argmax, ties to the lowest index), acts
    [(name, array)] = input x0 (int8), each requant output (int8) and the logits, shaped like
    QModel.int_eval's acts, and shifts [(name, int64 [B])] of every ShiftNorm.
    """
    model.check()
    n = int(model.image_size)
    p = np.asarray(pixels)
    if p.dtype != np.uint8 or p.ndim != 3 or p.shape[1:] != (n, n):
        raise ValueError(f"refimpl.run: pixels: must be uint8 [B, {n}, {n}]; got {p.dtype} {p.shape}")
    acts, shifts, scratch = _plan(model, p.shape[0])
    for lo in range(0, p.shape[0], CHUNK):
        _run_chunk(model, p[lo:lo + CHUNK], lo, acts, shifts, scratch)
    logits = acts[-1][1]
    preds = np.empty(logits.shape[0], dtype=np.int64)
    K.argmax(logits, preds)
    return dict(logits=logits, preds=preds, acts=acts, shifts=shifts)
