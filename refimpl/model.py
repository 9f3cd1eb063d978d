"""Glue of the numba reference engine: validate a packed model, then walk its layers with the kernels.

`from_export(QModel.export_model())` packs every layer's codes (pipeline/packing.py, CONTRACT §9) and
drops the unpacked codes, so `run` sees only what the device sees. `run` returns the activations
and ShiftNorm shifts with the names, order, shapes and values of `QModel.int_eval`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.packing import pack, row_words
from pipeline.spec import ACC_LIMIT, FORMATS, MAX_OUT_SHIFT, layer_bound
from refimpl import kernels as K

CHUNK = 256           # images per pass: the int64 layer scratch (CHUNK*C*H*W*8 bytes) is reused

_LAYER_KEYS = ("name", "kind", "format", "words", "row_words", "out_shifts", "n_in", "n_out", "groups",
               "in_shape", "out_shape", "pool", "requant")


def from_export(export: dict[str, Any]) -> dict[str, Any]:
    """The export_model() dict with each layer's codes replaced by packed `words` and `row_words`."""
    model = {k: v for k, v in export.items() if k != "layers"}
    model["layers"] = []
    for lay in export["layers"]:
        codes = np.asarray(lay["codes"])
        words, rw = pack(codes.reshape(codes.shape[0], -1), lay["format"])
        packed = {k: v for k, v in lay.items() if k != "codes"}
        packed.update(words=words, row_words=rw)
        model["layers"].append(packed)
    return model


def _fail(where: str, msg: str) -> None:
    raise ValueError(f"refimpl.run: {where}: {msg}")


def _check_layer(lay: dict[str, Any], in_shape: tuple[int, ...], last: bool) -> tuple[int, ...]:
    """Check one packed layer against its input shape; returns its output shape (per image)."""
    missing = [k for k in _LAYER_KEYS if k not in lay]
    name = lay.get("name", "?")
    if missing:
        _fail(f"layer {name}", f"missing keys {missing}; build the model with refimpl.model.from_export")
    fmt, kind = lay["format"], lay["kind"]
    if fmt not in K.FORMAT_IDS:
        _fail(f"layer {name}", f"format must be one of {', '.join(K.FORMAT_IDS)}; got {fmt!r}")
    n_in, n_out, groups = int(lay["n_in"]), int(lay["n_out"]), int(lay["groups"])
    if kind == "fc":
        if in_shape != (n_in,) or n_out < 1:
            _fail(f"layer {name}", f"fc expects {n_in} inputs and n_out >= 1; gets {in_shape}, n_out {n_out}")
        out = (n_out,)
    elif kind in ("conv", "dwconv"):
        if len(in_shape) != 3 or groups < 1 or in_shape[0] % groups or n_out % groups:
            _fail(f"layer {name}", f"conv input must be [C, H, W] with C and n_out divisible by groups "
                  f"{groups}; got {in_shape}, n_out {n_out}")
        c, h, w = in_shape
        if n_in != 9 * (c // groups) or h < 3 or w < 3:
            _fail(f"layer {name}", f"n_in must be 9 * {c // groups} and the map at least 3x3; "
                  f"got n_in {n_in}, map {h}x{w}")
        out = (n_out, h - 2, w - 2)
        if lay["pool"]:
            out = (n_out, out[1] // 2, out[2] // 2)
        if min(out[1:]) < 1:
            _fail(f"layer {name}", f"output map {out} is empty")
    else:
        _fail(f"layer {name}", f"kind must be fc, conv or dwconv; got {kind!r}")
    if kind == "fc" and lay["pool"]:
        _fail(f"layer {name}", "an fc layer cannot pool")
    if tuple(lay["out_shape"]) != out:
        _fail(f"layer {name}", f"out_shape {tuple(lay['out_shape'])} does not follow from the input {in_shape}")
    if bool(lay["requant"]) == last:
        _fail(f"layer {name}", "every layer but the last must requant, and the last must not")
    rw = row_words(n_in, fmt)
    words = lay["words"]
    if int(lay["row_words"]) != rw or not isinstance(words, np.ndarray) or words.dtype != np.uint32 \
            or words.shape != (n_out * rw,):
        _fail(f"layer {name}", f"words must be uint32 [{n_out} * {rw}] with row_words {rw}; got "
              f"{getattr(words, 'dtype', type(words))} {getattr(words, 'shape', '')}, row_words {lay['row_words']}")
    k = np.asarray(lay["out_shifts"])
    if k.shape != (n_out,) or k.dtype.kind not in "iu" or k.min() < 0 or k.max() > MAX_OUT_SHIFT:
        _fail(f"layer {name}", f"out_shifts must be {n_out} integers in [0, {MAX_OUT_SHIFT}]; got {k!r}")
    bound = layer_bound(n_in, fmt, int(k.max()))
    if bound > ACC_LIMIT:
        _fail(f"layer {name}", f"accumulator bound {n_in}*127*{FORMATS[fmt].max_abs_code}*2^{int(k.max())} "
              f"= {bound} exceeds 2^31-2^24 (CONTRACT §3)")
    return out


def check_model(model: dict[str, Any]) -> None:
    """Raise ValueError naming the first thing in a packed model that breaks the contract."""
    for key in ("kind", "image_size", "input_zero", "num_classes", "layers"):
        if key not in model:
            _fail("model", f"missing key {key!r}; build it with refimpl.model.from_export(export_model())")
    n, z = int(model["image_size"]), int(model["input_zero"])
    if n < 1 or not 0 <= z <= 127:
        _fail("model", f"image_size must be >= 1 and input_zero in [0, 127]; got {n}, {z}")
    if model["kind"] not in ("fc", "cnn") or not model["layers"]:
        _fail("model", f"kind must be fc or cnn with at least one layer; got {model['kind']!r}")
    shape: tuple[int, ...] = (1, n, n) if model["kind"] == "cnn" else (n * n,)
    layers = model["layers"]
    for i, lay in enumerate(layers):
        if lay.get("kind") == "fc" and len(shape) == 3:
            shape = (int(np.prod(shape)),)                  # channel-major flatten (CONTRACT §6)
        shape = _check_layer(lay, shape, i == len(layers) - 1)
    if shape != (int(model["num_classes"]),) or layers[-1]["kind"] != "fc":
        _fail("model", f"the last layer must be fc with num_classes = {model['num_classes']} outputs; got {shape}")


def _plan(model: dict[str, Any], b: int) -> tuple[list, list, list]:
    """Output arrays for B images (acts, shifts) and per-layer int64 scratch for one chunk."""
    n = int(model["image_size"])
    acts = [("input", np.empty((b, 1, n, n) if model["kind"] == "cnn" else (b, n * n), dtype=np.int8))]
    shifts, scratch = [], []
    for lay in model["layers"]:
        out = tuple(int(v) for v in lay["out_shape"])
        last = not lay["requant"]
        acts.append((lay["name"], np.empty((b, *out), dtype=np.int64 if last else np.int8)))
        if not last:
            shifts.append((lay["name"], np.empty(b, dtype=np.int64)))
        c = min(b, CHUNK)
        if lay["kind"] == "fc":
            scratch.append((np.empty((c, *out), dtype=np.int64), None))
        else:
            h, w = (int(v) - 2 for v in lay["in_shape"][1:])
            conv = np.empty((c, out[0], h, w), dtype=np.int64)
            scratch.append((conv, np.empty((c, *out), dtype=np.int64) if lay["pool"] else None))
    return acts, shifts, scratch


def _run_chunk(model: dict[str, Any], pixels: np.ndarray, lo: int, acts: list, shifts: list,
               scratch: list) -> None:
    """Images lo .. lo + len(pixels) - 1: write their rows of acts and shifts."""
    b, n = pixels.shape[0], int(model["image_size"])
    hi = lo + b
    x = acts[0][1][lo:hi]
    K.input(np.ascontiguousarray(pixels.reshape(b, n * n)), int(model["input_zero"]), x.reshape(b, n * n))
    for i, lay in enumerate(model["layers"]):
        fmt_id, k = K.FORMAT_IDS[lay["format"]], np.asarray(lay["out_shifts"]).astype(np.uint8)
        n_out, rw, relu = int(lay["n_out"]), int(lay["row_words"]), bool(lay["requant"])
        conv, pool = scratch[i]
        y = acts[i + 1][1][lo:hi] if not relu else conv[:b]      # logits go straight to their output
        if lay["kind"] == "fc":
            K.fc(x.reshape(b, int(np.prod(x.shape[1:]))), lay["words"], rw, fmt_id, n_out, k, relu, y)
        else:
            K.conv3x3(x, lay["words"], rw, fmt_id, n_out, int(lay["groups"]), k, relu, y)
            if lay["pool"]:
                K.maxpool2(y, pool[:b])
                y = pool[:b]
        if not relu:                                        # final layer: logits, no requant
            return
        x = acts[i + 1][1][lo:hi]
        flat = int(np.prod(y.shape[1:]))
        K.shiftnorm(y.reshape(b, flat), x.reshape(b, flat), shifts[i][1][lo:hi])


def run(model: dict[str, Any], pixels: np.ndarray) -> dict[str, Any]:
    """Run a packed model (from_export) on uint8 images [B, N, N].

    Returns logits int64 [B, classes], preds int64 [B] (argmax, ties to the lowest index), acts
    [(name, array)] = input x0 (int8), each requant output (int8) and the logits, shaped like
    QModel.int_eval's acts, and shifts [(name, int64 [B])] of every ShiftNorm.
    """
    check_model(model)
    n = int(model["image_size"])
    p = np.asarray(pixels)
    if p.dtype != np.uint8 or p.ndim != 3 or p.shape[1:] != (n, n):
        _fail("pixels", f"must be uint8 [B, {n}, {n}]; got {p.dtype} {p.shape}")
    acts, shifts, scratch = _plan(model, p.shape[0])
    for lo in range(0, p.shape[0], CHUNK):
        _run_chunk(model, p[lo:lo + CHUNK], lo, acts, shifts, scratch)
    logits = acts[-1][1]
    preds = np.empty(logits.shape[0], dtype=np.int64)
    K.argmax(logits, preds)
    return dict(logits=logits, preds=preds, acts=acts, shifts=shifts)
