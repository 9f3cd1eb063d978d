"""The model header of the SDCC engine (bm_pdk_model.h for mcu/padauk/src/bm_pdk.c): a packed FC model and
test images as C.

Weights stay in the contract's packing (CONTRACT §9, contract/packing.py): each row is the little-endian
bytes of its packed words with the trailing padding bytes dropped (a ROM byte costs a whole instruction
word on a Padauk part), so the engine reads code j of a row at byte j // P, P = codes per byte from the
format table. The accumulator width is decided here from the model's own weights: int16 where every partial
sum of every row, for every possible input, fits in 16 bits (`row_bound`), else int32. That is exact for all
inputs, and it lets 4bitsym layers of 64 inputs, whose CONTRACT §3 worst case needs 17 bits, keep 2-byte
accumulators (RAM is the limit on these parts). The text is deterministic. numpy only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from contract.formats import FORMATS
from contract.model import PackedModel
from contract.packing import unpack

FORMATS_PDK = ("binary", "binarybalanced", "ternary", "2bitsym", "4bitsym")   # multiplier-free, byte packed
INT16_MAX = 2**15 - 1
IDX8_MAX = 250        # a uint8 index keeps headroom: ternary's loop steps 5 past a byte's first weight


@dataclass(frozen=True)
class PdkLayout:
    acc_bits: int                 # 16 or 32: bmp_acc_t
    idx_bits: int                 # 8 or 16: bmp_idx_t
    region_a: int                 # bytes at offset 0: the logits, and the hidden layers an even number before the last
    region_b: int                 # bytes after it: the other hidden layers' int8 outputs
    outs: tuple[int, ...]         # per hidden layer: the offset of the region it writes (0 or region_a)
    row_bytes: tuple[int, ...]    # per layer
    weight_bytes: int             # const weight bytes (one ROM word each)
    shift_bytes: int              # const per-output shift bytes (per_tensor layers store none)


def row_bytes(n_in: int, fmt: str) -> int:
    """Bytes of one row without the word padding: codes per byte from the format table."""
    per_byte = FORMATS[fmt].codes_per_word // 4
    return -(-n_in // per_byte)


def problems(kind: str, formats: Iterable[str]) -> list[tuple[str, str]]:
    """(what, problem) for each thing the SDCC engine cannot run: a kind other than fc, a format outside
    FORMATS_PDK. The config (model.kind, quant.formats) and check() both ask here."""
    out = []
    if kind != "fc":
        out.append(("kind", f"the padauk engine runs fully connected models; got kind {kind!r} (allowed: fc)"))
    bad = sorted(set(formats) - set(FORMATS_PDK))
    if bad:
        out.append(("formats", f"the padauk engine does not run format {', '.join(bad)} "
                               f"(allowed: {', '.join(FORMATS_PDK)})"))
    return out


def row_bound(codes: np.ndarray, lo: int, hi: int, shifts: np.ndarray) -> int:
    """The largest |partial sum| times 2^k[o] any row of codes [n_out, n_in] can reach for inputs in [lo, hi].

    Each term w * x lies between min(w lo, w hi) and max(w lo, w hi), so every partial sum (in any order) lies
    between the sum of the terms' negative minima and the sum of their positive maxima; the shift k[o] scales
    the row's whole sum (CONTRACT §3), and a hidden layer's requant only ever makes values smaller."""
    c = np.asarray(codes, dtype=np.int64)
    ends = np.stack([c * lo, c * hi])
    top = np.maximum(ends.max(0), 0).sum(1)
    bottom = -np.minimum(ends.min(0), 0).sum(1)
    return int((np.maximum(top, bottom) << np.asarray(shifts, dtype=np.int64)).max())


def model_bound(model: PackedModel) -> int:
    """row_bound over every layer: the first reads x0 = (p >> 1) - Z in [-Z, 127 - Z] (CONTRACT §1), the
    others requantized activations in [0, 127] (§4)."""
    z = model.input_zero
    return max(row_bound(unpack(lay.words, lay.format, lay.n_out, lay.n_in), -z if i == 0 else 0,
                         127 - z if i == 0 else 127, lay.out_shifts) for i, lay in enumerate(model.layers))


def check(model: PackedModel) -> None:
    """Raise ValueError unless the model is sound and the SDCC engine runs it (FC, byte-packed
    multiplier-free formats)."""
    model.check()
    found = problems(model.kind, [lay.format for lay in model.layers])
    if found:
        raise ValueError("; ".join(msg for _, msg in found))


def pdk_layout(model: PackedModel) -> PdkLayout:
    check(model)
    lays = model.layers
    rbs = tuple(row_bytes(lay.n_in, lay.format) for lay in lays)
    acc_bits = 16 if model_bound(model) <= INT16_MAX else 32
    # the last layer writes region A; the hidden layers alternate backwards from it, so none writes what it reads
    in_a = [(len(lays) - 1 - j) % 2 == 0 for j in range(len(lays) - 1)]
    a = max([lays[-1].n_out * acc_bits // 8, *(lay.n_out for lay, ina in zip(lays, in_a) if ina)])
    b = max([0, *(lay.n_out for lay, ina in zip(lays, in_a) if not ina)])
    big = max([a + b, *(max(lay.n_in, lay.n_out) for lay in lays)])
    return PdkLayout(acc_bits=acc_bits, idx_bits=8 if big <= IDX8_MAX else 16, region_a=a, region_b=b,
                     outs=tuple(0 if ina else a for ina in in_a), row_bytes=rbs,
                     weight_bytes=sum(rb * lay.n_out for rb, lay in zip(rbs, lays)),
                     shift_bytes=sum(lay.n_out for lay in lays if lay.out_shifts.any()))


def row_data(words: np.ndarray, n_out: int, rb: int) -> np.ndarray:
    """[n_out, rb] uint8: each row's packed words as little-endian bytes, the padding bytes dropped."""
    w = np.asarray(words, dtype="<u4").reshape(n_out, -1)
    return w.view(np.uint8).reshape(n_out, -1)[:, :rb]


def _bytes(name: str, data: np.ndarray, per_line: int = 16) -> str:
    flat = [int(v) for v in np.asarray(data).reshape(-1)]
    lines = [", ".join(f"0x{v:02x}" for v in flat[i:i + per_line]) for i in range(0, len(flat), per_line)]
    return f"static const uint8_t {name}[{len(flat)}] = {{\n    " + ",\n    ".join(lines) + "\n};"


def render(model: PackedModel, images: np.ndarray) -> str:
    """bm_pdk_model.h: types, sizes, weights, shifts, the layer sequence and the images (uint8 [B, N, N])."""
    lay_ = pdk_layout(model)
    n = model.image_size
    px = np.asarray(images)
    if px.dtype != np.uint8 or px.ndim != 3 or px.shape[1:] != (n, n) or len(px) < 1:
        raise ValueError(f"padauk header: images must be uint8 [B >= 1, {n}, {n}]; got {px.dtype} {px.shape}")
    used = {lay.format for lay in model.layers}
    uses = [f"#define BMP_USES_{f.upper()} {int(f in used)}" for f in FORMATS_PDK]
    out = ["/* generated by mcu/padauk/header.py: do not edit */", "#ifndef BM_PDK_MODEL_H",
           "#define BM_PDK_MODEL_H", "#include <stdint.h>",
           f"typedef int{lay_.acc_bits}_t bmp_acc_t;          /* every row's partial sums fit (row_bound) */",
           f"typedef uint{lay_.acc_bits}_t bmp_uacc_t;",
           f"typedef uint{lay_.idx_bits}_t bmp_idx_t;",
           f"#define BMP_RAM_N {lay_.region_a + lay_.region_b}          /* region A {lay_.region_a}, B {lay_.region_b} */",
           f"#define BMP_N_CLASSES {model.num_classes}",
           f"#define BMP_FROM_IMAGE {2**lay_.idx_bits - 1}", f"#define BMP_TO_LOGITS {2**lay_.idx_bits - 1}",
           '#include "bm_pdk.h"',
           f"#define BMP_N_PIXELS {n * n}", f"#define BMP_INPUT_ZERO {model.input_zero}",
           f"#define BMP_N_IMAGES {len(px)}",
           f"#define BMP_ANY_SHIFTS {int(lay_.shift_bytes > 0)}",
           f"#define BMP_ONE_FORMAT {FORMATS[next(iter(used))].id if len(used) == 1 else -1}",
           *uses]
    seq = []
    last = len(model.layers) - 1
    for i, (lay, rb) in enumerate(zip(model.layers, lay_.row_bytes)):
        out.append(f"/* {lay.name}: {lay.format}, {lay.n_in} -> {lay.n_out}, {rb} bytes a row */")
        out.append(_bytes(f"bmp_w{i}", row_data(lay.words, lay.n_out, rb)))
        shifts = "0"
        if lay.out_shifts.any():
            out.append(_bytes(f"bmp_k{i}", lay.out_shifts.astype(np.uint8)))
            shifts = f"bmp_k{i}"
        args = f"bmp_w{i}, {shifts}, {lay.n_in}, {lay.n_out}, BMP_FMT_{lay.format.upper()}, " + \
            ("BMP_FROM_IMAGE" if i == 0 else str(lay_.outs[i - 1]))
        seq.append(f"    BMP_LAST({args})" if i == last else f"    BMP_HIDDEN({args}, {lay_.outs[i]})")
    out += ["#define BMP_LAYERS \\", " \\\n".join(seq)]
    out.append(_bytes("bmp_images", px.reshape(-1)))
    out += ["#endif", ""]
    return "\n".join(out)
