"""Hypothesis builders for the integer contract: formats, layer shapes, codes, activations, shifts."""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st

from pipeline.models import build_model
from contract.formats import FORMATS
from contract.spec import ACC_LIMIT, MAX_OUT_SHIFT, ModelSpec

EXPORTABLE = tuple(f for f, spec in FORMATS.items() if spec.exportable)


def formats() -> st.SearchStrategy[str]:
    return st.sampled_from(EXPORTABLE)


def code_values(fmt: str) -> st.SearchStrategy[int]:
    """A code of fmt, with its extremes (and 0 where it exists) drawn often."""
    codes = FORMATS[fmt].codes
    edges = sorted({codes[0], codes[-1], min(codes, key=abs)})
    return st.one_of(st.sampled_from(edges), st.sampled_from(codes))


@st.composite
def codes(draw, fmt: str, n_out: int, n_in: int) -> np.ndarray:
    """int64 [n_out, n_in] codes of fmt; sometimes one code repeated everywhere."""
    if draw(st.integers(0, 9)) == 0:
        return np.full((n_out, n_in), draw(code_values(fmt)), dtype=np.int64)
    flat = draw(st.lists(code_values(fmt), min_size=n_out * n_in, max_size=n_out * n_in))
    return np.array(flat, dtype=np.int64).reshape(n_out, n_in)


def act_values(signed: bool = True) -> st.SearchStrategy[int]:
    """An int8 activation: |x| <= 127 (input x0), or [0, 127] after ShiftNorm; extremes often."""
    lo = -127 if signed else 0
    return st.one_of(st.sampled_from(sorted({lo, 0, 127})), st.integers(lo, 127))


@st.composite
def activations(draw, shape: tuple[int, ...], signed: bool = True) -> np.ndarray:
    """int8 array of shape; sometimes constant (all 0, all 127, all -127)."""
    n = int(np.prod(shape))
    if draw(st.integers(0, 7)) == 0:
        return np.full(shape, draw(act_values(signed)), dtype=np.int8)
    return np.array(draw(st.lists(act_values(signed), min_size=n, max_size=n)), dtype=np.int8).reshape(shape)


@st.composite
def out_shifts(draw, n_out: int) -> np.ndarray:
    """uint8 [n_out] shifts in [0, 7]: all 0 (per_tensor), all 7, or mixed."""
    mode = draw(st.sampled_from(("zero", "max", "mixed")))
    if mode == "zero":
        return np.zeros(n_out, dtype=np.uint8)
    if mode == "max":
        return np.full(n_out, MAX_OUT_SHIFT, dtype=np.uint8)
    return np.array(draw(st.lists(st.integers(0, MAX_OUT_SHIFT), min_size=n_out, max_size=n_out)),
                    dtype=np.uint8)


@st.composite
def fc_cases(draw, max_in: int = 70) -> dict:
    """One fc layer call: fmt, codes [n_out, n_in], x [B, n_in], shifts, relu. n_in crosses word edges."""
    fmt = draw(formats())
    n_out, n_in, b = draw(st.integers(1, 6)), draw(st.integers(1, max_in)), draw(st.integers(1, 3))
    relu = draw(st.booleans())
    return dict(fmt=fmt, codes=draw(codes(fmt, n_out, n_in)), x=draw(activations((b, n_in), signed=True)),
                out_shifts=draw(out_shifts(n_out)), relu=relu)


@st.composite
def conv_cases(draw) -> dict:
    """One conv call: plain conv (groups=1, Cin 1..2), depthwise (groups = Cin = n_out), or grouped."""
    fmt = draw(formats())
    kind = draw(st.sampled_from(("conv", "dwconv", "grouped")))
    if kind == "conv":
        cin, n_out, groups = draw(st.integers(1, 2)), draw(st.integers(1, 4)), 1
    elif kind == "dwconv":
        cin = n_out = groups = draw(st.integers(1, 4))
    else:
        groups = draw(st.integers(1, 2))
        cin, n_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    h, w, b = draw(st.integers(3, 7)), draw(st.integers(3, 7)), draw(st.integers(1, 2))
    return dict(fmt=fmt, groups=groups, codes=draw(codes(fmt, n_out, 9 * (cin // groups))),
                x=draw(activations((b, cin, h, w), signed=draw(st.booleans()))),
                out_shifts=draw(out_shifts(n_out)), relu=draw(st.booleans()))


@st.composite
def shiftnorm_inputs(draw) -> np.ndarray:
    """int64 [B, L] pre-requant values in [0, 2^31 - 2^24] (a few negatives: ShiftNorm's ReLU)."""
    b, n = draw(st.integers(1, 3)), draw(st.integers(1, 12))
    top = draw(st.sampled_from((0, 1, 127, 128, 255, 256, 2**20, ACC_LIMIT)))
    vals = st.one_of(st.sampled_from((0, top, top // 2, -1)), st.integers(-5, top))
    return np.array(draw(st.lists(vals, min_size=b * n, max_size=b * n)), dtype=np.int64).reshape(b, n)

# ---- small whole models shared by the numba and C engine tests ----------------------------------------
MODEL_SPECS = [
    ModelSpec(kind="fc", image_size=16, widths=(24, 16), formats=("4bitsym",)),
    ModelSpec(kind="fc", image_size=12, widths=(20, 16, 12), formats=("binary", "ternary", "2bitsym", "fp130"),
              scaling="per_output"),
    ModelSpec(kind="fc", image_size=8, widths=(16, 16), formats=("nf4", "4bit", "8bit"), scaling="per_output"),
    ModelSpec(kind="fc", image_size=10, widths=(12, 12), formats=("binarybalanced", "4bitsym", "ternary"),
              input_zero=0, num_classes=3),
    ModelSpec(kind="cnn", image_size=16, cnn_channels=4, widths=(12,),
              formats=("8bit", "8bit", "8bit", "2bitsym", "4bitsym"), scaling="per_output"),
    ModelSpec(kind="cnn", image_size=13, cnn_channels=3, widths=(8, 8),
              formats=("ternary", "fp130", "nf4", "4bit", "binary", "4bitsym"), scaling="per_output",
              input_zero=127),
    ModelSpec(kind="cnn", image_size=12, cnn_channels=5, widths=(6,), formats=("4bitsym",)),
    ModelSpec(kind="cnn", image_size=16, cnn_channels=6, mix=True, widths=(10,),
              formats=("fp130", "fp130", "fp130", "fp130", "2bitsym", "4bitsym"), scaling="per_output"),
    ModelSpec(kind="cnn", image_size=13, cnn_channels=5, mix=True, widths=(8,),
              formats=("8bit", "4bitsym", "8bit", "ternary", "4bit", "binary"), scaling="per_output", input_zero=0),
]


def random_model(spec: ModelSpec, seed: int):
    """A QModel with row scales spread over 2^-3..2^3 so per-output shifts differ; pruned if the spec says."""
    torch.manual_seed(seed)
    m = build_model(spec)
    with torch.no_grad():                        # spread row scales so per-output shifts k differ
        for layer in m.layers:
            w = layer.weight
            w.mul_(torch.exp2(torch.randint(-3, 4, (w.shape[0],)).to(w.dtype)).view(-1, *[1] * (w.dim() - 1)))
    if spec.prune_keep:
        m.apply_pruning()
    m.update_clipping(fresh=True)
    return m
