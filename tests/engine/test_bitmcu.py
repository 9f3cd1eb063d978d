"""engine: C kernels == tests/naive.py; C models == refimpl.model.run on every activation, shift and logit;
clean under ASan/UBSan; deterministic headers; format selection; no multiply on RV32EC."""
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, example, given, note, settings
from hypothesis import strategies as st

from engine.build import (ENGINE_DIR, build_kernel_library, build_library, load_library, model_info, run_c,
                          sanitizer_env)
from contract.layout import MODEL_BYTES, layout
from engine.header import render_header
from contract.packing import codes_per_word, pack
from contract.formats import FORMATS, NF4_CODES
from contract.spec import ACC_LIMIT, MAX_OUT_SHIFT, ModelSpec, layer_bound
from mcu.build import CC as RV_CC  # the cross compiler and its objdump (BITMCU_CROSS may name another)
from mcu.build import OBJDUMP as RV_OBJDUMP
from contract.formats import FORMAT_IDS
from contract.model import from_export
from refimpl.model import run
from tests import naive
from tests.strategies import EXPORTABLE, MODEL_SPECS, conv_cases, fc_cases, random_model, shiftnorm_inputs

ROOT = Path(__file__).resolve().parents[2]
MULFREE = sum(1 << FORMAT_IDS[f] for f in EXPORTABLE if FORMATS[f].multiplier_free)
BM_OK, BM_ERR_ARG, BM_ERR_FORMAT = 0, -1, -2

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None,
                                reason="gcc not found: the C engine tests need a host C compiler")


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bitmcu_build")


@pytest.fixture(scope="session")
def klib(build_dir):
    return load_library(build_kernel_library(build_dir))


# bm_fc's variants (bitmcu.h): reference row decoders, fast column tables of one and of two word columns
KERNELS = {"ref": "BM_CFG_KERNELS=0", "fast": "BM_CFG_KERNELS=1", "fast2": "BM_CFG_FC_WORDS=2"}


@pytest.fixture(scope="session", params=list(KERNELS))
def fclib(request, build_dir):
    """The kernel library with each bm_fc variant."""
    return load_library(build_kernel_library(build_dir, defines=[KERNELS[request.param]]))


def _first_diff(got, want) -> str:
    g, w = np.asarray(got), np.asarray(want)
    bad = np.argwhere(g != w)
    return f"{len(bad)} of {g.size} differ; first at {tuple(bad[0])}: got {g[tuple(bad[0])]} want " \
           f"{w[tuple(bad[0])]}" if len(bad) else "equal"


# ---- kernels, one call per image, against the plain-Python oracle ---------------------------------------
def _buf(k, ctype, a):
    return k.ffi.from_buffer(ctype, a, require_writable=not ctype.startswith("const"))


def _shift_ptr(k, shifts):
    """NULL for all-zero shifts (the per_tensor form of the header), else the array."""
    return k.ffi.NULL if not shifts.any() else _buf(k, "const uint8_t[]", shifts)


def c_fc(k, case):
    words, rw = pack(case["codes"], case["fmt"])
    n_out, n_in = case["codes"].shape
    x = np.ascontiguousarray(case["x"])
    out = np.zeros((x.shape[0], n_out), dtype=np.int32)
    for b in range(x.shape[0]):
        st_ = k.lib.bm_fc(_buf(k, "const int8_t[]", x[b]), n_in, _buf(k, "const uint32_t[]", words), rw,
                          FORMAT_IDS[case["fmt"]], n_out, _shift_ptr(k, case["out_shifts"]), int(case["relu"]),
                          _buf(k, "int32_t[]", out[b]))
        assert st_ == BM_OK
    return out


def test_format_ids_match_refimpl():
    text = (ENGINE_DIR / "bitmcu.h").read_text()
    ids = {m[1].lower(): int(m[2]) for m in re.finditer(r"#define BM_FMT_([0-9A-Z]+) (\d+)", text) if m[1] != "COUNT"}
    assert ids == FORMAT_IDS


def test_format_constants_match_the_python_format_table(klib):
    """bitmcu.h's BM_FMT_x_FIELD_BITS, BM_FMT_x_CODES_PER_WORD and BM_NF4_CODES, which the engine's format
    descriptors are built from, equal the format table's (contract/formats.py)."""
    n = len(FORMAT_IDS)
    bits, per, nf4 = (klib.ffi.new(f"int32_t[{k}]") for k in (n, n, 16))
    klib.lib.bm_glue_formats(bits, per, nf4)
    for fmt, i in FORMAT_IDS.items():
        assert per[i] == codes_per_word(fmt), fmt
        assert bits[i] == FORMATS[fmt].field_bits, fmt
    assert list(nf4) == list(NF4_CODES)


@settings(max_examples=80, deadline=None)
@given(fc_cases())
def test_fc_matches_naive(fclib, case):
    got = c_fc(fclib, case)
    want = naive.fc(case["x"].tolist(), case["codes"].tolist(), case["out_shifts"].tolist(), case["relu"])
    note(f"{case['fmt']} {case['codes'].shape} relu {case['relu']}: {_first_diff(got, want)}")
    assert got.tolist() == want


@pytest.fixture(scope="session", params=["mul", "mulfree"])
def convlib(request, build_dir):
    """bm_conv3x3's two kinds of kernels: decoded weights times inputs (a core that multiplies), and gathered
    windows with the row dot products (BM_CFG_NO_MULTIPLY, the multiplier-free formats)."""
    defines = [] if request.param == "mul" else ["BM_CFG_NO_MULTIPLY"]
    return request.param, load_library(build_kernel_library(build_dir, defines=defines))


@settings(max_examples=60, deadline=None)
@given(conv_cases())
def test_conv3x3_matches_naive(convlib, case):
    kind, klib = convlib
    assume(kind == "mul" or FORMATS[case["fmt"]].multiplier_free)
    x, c, fmt = np.ascontiguousarray(case["x"]), case["codes"], case["fmt"]
    words, rw = pack(c, fmt)
    b, cin, h, w = x.shape
    out = np.zeros((b, c.shape[0], h - 2, w - 2), dtype=np.int32)
    for i in range(b):
        st_ = klib.lib.bm_conv3x3(_buf(klib, "const int8_t[]", x[i]), cin, h, w, _buf(klib, "const uint32_t[]", words),
                                  rw, FORMAT_IDS[fmt], c.shape[0], case["groups"], _shift_ptr(klib, case["out_shifts"]),
                                  int(case["relu"]), _buf(klib, "int32_t[]", out[i]))
        assert st_ == BM_OK
    want = naive.conv3x3(x.tolist(), c.tolist(), case["groups"], case["out_shifts"].tolist(), case["relu"])
    note(f"{fmt} groups {case['groups']} x {x.shape}: {_first_diff(out, want)}")
    assert out.tolist() == want


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(2, 7), st.integers(2, 7), st.booleans(), st.data())
def test_maxpool2_matches_naive(klib, c, h, w, in_place, data):
    vals = data.draw(st.lists(st.integers(0, ACC_LIMIT), min_size=c * h * w, max_size=c * h * w))
    y = np.array(vals, dtype=np.int32).reshape(c, h, w)
    out = y.copy() if in_place else np.zeros((c, h // 2, w // 2), dtype=np.int32)
    src = out if in_place else y
    assert klib.lib.bm_maxpool2(_buf(klib, "const int32_t[]", src), c, h, w, _buf(klib, "int32_t[]", out)) == BM_OK
    got = out.reshape(-1)[:c * (h // 2) * (w // 2)].reshape(c, h // 2, w // 2)
    assert got.tolist() == naive.maxpool2([y.tolist()])[0]


@settings(max_examples=80, deadline=None)
@given(shiftnorm_inputs())
@example(np.zeros((2, 5), dtype=np.int64))                              # s = 0, all outputs 0
@example(np.array([[ACC_LIMIT, ACC_LIMIT // 2, 1]], dtype=np.int64))    # largest shift s = 24
@example(np.array([[255, 254, 1]], dtype=np.int64))                     # (255 + 1) >> 1 = 128 -> clamp 127
def test_shiftnorm_matches_naive(klib, y):
    want_out, want_s = naive.shiftnorm(y.tolist())
    for b in range(y.shape[0]):
        row = np.ascontiguousarray(y[b], dtype=np.int32)
        out = np.zeros(row.size, dtype=np.int8)
        s = klib.lib.bm_shiftnorm(_buf(klib, "const int32_t[]", row), row.size, _buf(klib, "int8_t[]", out))
        assert (out.tolist(), s) == (want_out[b], want_s[b])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-2**31 + 1, 2**31 - 1) | st.integers(-2, 2), min_size=1, max_size=12))
@example([5, 5, 5])
@example([-1, 7, 7])
def test_argmax_ties_go_to_lowest_index(klib, row):
    a = np.array(row, dtype=np.int32)
    assert klib.lib.bm_argmax(_buf(klib, "const int32_t[]", a), a.size) == naive.argmax([row])[0]


def test_input_map_every_pixel(klib):
    p = np.arange(256, dtype=np.uint8)
    for z in (0, 16, 127):
        out = np.zeros(256, dtype=np.int8)
        assert klib.lib.bm_input(_buf(klib, "const uint8_t[]", p), 256, z, _buf(klib, "int8_t[]", out)) == BM_OK
        assert out.tolist() == naive.input([p.tolist()], z)[0]


def test_extreme_fc_accumulator_reaches_the_bound(fclib):
    """8bit, n_in 1024, k 7: |acc| = 2^31 - 2^24 exactly, then ShiftNorm s = 24 (CONTRACT §3, §4)."""
    x = np.full((2, 1024), -127, dtype=np.int8)
    x[1] = 127
    case = dict(fmt="8bit", codes=np.full((2, 1024), -128, dtype=np.int64), x=x,
                out_shifts=np.array([7, 0], dtype=np.uint8), relu=False)
    assert c_fc(fclib, case).tolist() == [[ACC_LIMIT, ACC_LIMIT >> 7], [-ACC_LIMIT, -(ACC_LIMIT >> 7)]]
    y = c_fc(fclib, dict(case, relu=True))[0]
    out = np.zeros(2, dtype=np.int8)
    assert fclib.lib.bm_shiftnorm(_buf(fclib, "const int32_t[]", y), 2, _buf(fclib, "int8_t[]", out)) == 24
    assert out.tolist() == [127, 1]


def _edge_activations(rng, n_in: int) -> np.ndarray:
    """All 127, all -127, random signs of 127, and uniform in [-127, 127]: int8 [4, n_in]."""
    return np.stack([np.full(n_in, 127), np.full(n_in, -127), rng.choice([-127, 127], n_in),
                     rng.integers(-127, 128, n_in)]).astype(np.int8)


@pytest.mark.parametrize("fmt", EXPORTABLE)
def test_fc_rows_around_word_edges(fclib, fmt):
    """n_in = 1, 2 and around one, two and four words of codes (the fast kernels' blocks of word columns and
    their zero-padded last column), every shift 0..7, rows of the largest and smallest code and random rows,
    extreme activations, ReLU or not."""
    per, values = codes_per_word(fmt), np.array(FORMATS[fmt].codes, dtype=np.int64)
    rng = np.random.default_rng(FORMAT_IDS[fmt])
    for n_in in sorted({1, 2, per - 1, per, per + 1, 2 * per - 1, 2 * per + 3, 4 * per + 1} - {0}):
        codes = rng.choice(values, size=(8, n_in))
        codes[0], codes[1] = values.max(), values.min()
        x, shifts = _edge_activations(rng, n_in), np.arange(8, dtype=np.uint8)
        for relu in (False, True):
            got = c_fc(fclib, dict(fmt=fmt, codes=codes, x=x, out_shifts=shifts, relu=relu))
            want = naive.fc(x.tolist(), codes.tolist(), shifts.tolist(), relu)
            assert got.tolist() == want, f"{fmt} n_in {n_in} relu {relu}: {_first_diff(got, want)}"


@pytest.mark.parametrize("k", [0, MAX_OUT_SHIFT])
@pytest.mark.parametrize("fmt", EXPORTABLE)
def test_fc_longest_legal_rows(fclib, fmt, k):
    """The longest row CONTRACT §3 allows with shift k (at most 2^17 inputs), rows of the largest code of each
    sign: |acc| reaches the bound n_in * 127 * max|code| * 2^k, and C equals the oracle."""
    n_in = min(ACC_LIMIT // layer_bound(1, fmt, k), 1 << 17)
    values = np.array(FORMATS[fmt].codes, dtype=np.int64)
    rng = np.random.default_rng(n_in)
    codes = np.stack([np.full(n_in, values.min()), np.full(n_in, values.max()), rng.choice(values, n_in)])
    x = _edge_activations(rng, n_in)
    shifts = np.full(3, k, dtype=np.uint8)
    got = c_fc(fclib, dict(fmt=fmt, codes=codes, x=x, out_shifts=shifts, relu=False))
    want = naive.fc(x.tolist(), codes.tolist(), shifts.tolist(), False)
    assert got.tolist() == want, _first_diff(got, want)
    assert np.abs(got).max() == layer_bound(n_in, fmt, k)


def test_bad_arguments_and_unknown_formats(klib):
    ffi, lib = klib.ffi, klib.lib
    x, words, out = np.ones(9, np.int8), np.zeros(4, np.uint32), np.zeros(4, np.int32)
    xp, wp, op = _buf(klib, "const int8_t[]", x), _buf(klib, "const uint32_t[]", words), _buf(klib, "int32_t[]", out)
    for fmt in (-1, 9, 100):
        assert lib.bm_fc(xp, 9, wp, 1, fmt, 2, ffi.NULL, 1, op) == BM_ERR_FORMAT
        assert lib.bm_conv3x3(xp, 1, 3, 3, wp, 1, fmt, 1, 1, ffi.NULL, 1, op) == BM_ERR_FORMAT
    assert lib.bm_fc(xp, 9, wp, 1, FORMAT_IDS["8bit"], 2, ffi.NULL, 1, op) == BM_ERR_ARG       # 9 codes > 1 word
    assert lib.bm_fc(xp, 9, ffi.NULL, 3, FORMAT_IDS["8bit"], 1, ffi.NULL, 1, op) == BM_ERR_ARG
    bad_k = np.array([8], np.uint8)
    assert lib.bm_fc(xp, 9, wp, 3, FORMAT_IDS["8bit"], 1, _buf(klib, "const uint8_t[]", bad_k), 1, op) == BM_ERR_ARG
    assert lib.bm_conv3x3(xp, 1, 3, 2, wp, 1, FORMAT_IDS["binary"], 1, 1, ffi.NULL, 1, op) == BM_ERR_ARG  # w < 3
    assert lib.bm_conv3x3(xp, 3, 3, 3, wp, 1, FORMAT_IDS["binary"], 2, 2, ffi.NULL, 1, op) == BM_ERR_ARG  # 3 % 2
    assert lib.bm_shiftnorm(ffi.NULL, 1, ffi.NULL) == BM_ERR_ARG and lib.bm_argmax(op, 0) == BM_ERR_ARG


def test_fc_and_conv_format_subsets_refuse_the_other_kinds_formats(build_dir):
    """BM_CFG_FC_FORMATS / BM_CFG_CONV_FORMATS: bm_fc takes only the first, bm_conv3x3 only the second."""
    fc, conv = FORMAT_IDS["4bitsym"], FORMAT_IDS["8bit"]
    k = load_library(build_kernel_library(build_dir, defines=[f"BM_CFG_FORMATS={1 << fc | 1 << conv:#x}",
                                                              f"BM_CFG_FC_FORMATS={1 << fc:#x}",
                                                              f"BM_CFG_CONV_FORMATS={1 << conv:#x}"]))
    x, words, out = np.ones(9, np.int8), np.zeros(4, np.uint32), np.zeros(9, np.int32)
    xp, wp, op = _buf(k, "const int8_t[]", x), _buf(k, "const uint32_t[]", words), _buf(k, "int32_t[]", out)
    assert k.lib.bm_fc(xp, 9, wp, 2, fc, 1, k.ffi.NULL, 1, op) == BM_OK
    assert k.lib.bm_fc(xp, 9, wp, 3, conv, 1, k.ffi.NULL, 1, op) == BM_ERR_FORMAT
    assert k.lib.bm_conv3x3(xp, 1, 3, 3, wp, 3, conv, 1, 1, k.ffi.NULL, 1, op) == BM_OK
    assert k.lib.bm_conv3x3(xp, 1, 3, 3, wp, 2, fc, 1, 1, k.ffi.NULL, 1, op) == BM_ERR_FORMAT


def test_formats_left_out_of_bm_cfg_formats_return_err_format(build_dir):
    k = load_library(build_kernel_library(build_dir, defines=[f"BM_CFG_FORMATS={MULFREE:#x}"]))
    x, out = np.ones(8, np.int8), np.zeros(1, np.int32)
    for fmt in EXPORTABLE:
        words, rw = pack(np.full((1, 8), FORMATS[fmt].codes[-1], np.int64), fmt)
        st_ = k.lib.bm_fc(_buf(k, "const int8_t[]", x), 8, _buf(k, "const uint32_t[]", words), rw, FORMAT_IDS[fmt], 1,
                          k.ffi.NULL, 0, _buf(k, "int32_t[]", out))
        assert st_ == (BM_OK if FORMATS[fmt].multiplier_free else BM_ERR_FORMAT), fmt


# ---- whole models: C == refimpl.model.run (numba) on every layer ----------------------------------------
MODELS = MODEL_SPECS + [
    ModelSpec(kind="cnn", image_size=14, cnn_channels=5, widths=(7,), formats=("2bitsym", "binary", "fp130",
              "ternary", "8bit"), scaling="per_output", prune_keep=3),
    ModelSpec(kind="cnn", image_size=16, cnn_channels=5, mix=True, widths=(7,), formats=("fp130", "fp130", "8bit",
              "fp130", "2bitsym", "4bitsym"), scaling="per_output", prune_keep=3),
]
MODEL_IDS = [f"{s.kind}{'-mix' if s.mix else ''}-{s.image_size}-{'-'.join(s.formats)}-{s.scaling}"
             f"{'-pruned' if s.prune_keep else ''}"
             for s in MODELS]


def _pixels(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    px = rng.integers(0, 256, (24, n, n), dtype=np.uint8)
    px[:8] *= rng.random((8, n, n)) < 0.2                              # sparse, MNIST-like
    return np.concatenate([px, np.zeros((1, n, n), np.uint8), np.full((1, n, n), 255, np.uint8)])


def assert_same_run(got: dict, want: dict) -> None:
    assert [a for a, _ in got["acts"]] == [a for a, _ in want["acts"]]
    assert [a for a, _ in got["shifts"]] == [a for a, _ in want["shifts"]]
    for (name, a), (_, r) in zip(got["acts"] + got["shifts"], want["acts"] + want["shifts"]):
        assert a.shape == r.shape and a.dtype == r.dtype, f"{name}: {a.shape} {a.dtype} vs {r.shape} {r.dtype}"
        assert np.array_equal(a, r), f"{name}: {_first_diff(a, r)}"
    assert np.array_equal(got["logits"], want["logits"]), _first_diff(got["logits"], want["logits"])
    assert np.array_equal(got["preds"], want["preds"])


@pytest.fixture(scope="session")
def packed_models():
    return [from_export(random_model(s, seed=len(s.formats) * 31 + s.image_size).export_model()) for s in MODELS]


@pytest.mark.parametrize("kernels", list(KERNELS))
@pytest.mark.parametrize("i", range(len(MODELS)), ids=MODEL_IDS)
def test_model_matches_refimpl(i, kernels, packed_models, build_dir):
    model = packed_models[i]
    lib = load_library(build_library(render_header(model), build_dir, defines=[KERNELS[kernels]]))
    px = _pixels(model.image_size, seed=i)
    want = run(model, px)
    assert_same_run(run_c(lib, px, trace=True), want)
    fast = run_c(lib, px, trace=False)
    assert np.array_equal(fast["logits"], want["logits"]) and np.array_equal(fast["preds"], want["preds"])
    assert run_c(lib, px[:0])["logits"].shape == (0, model.num_classes)
    info, sizes = model_info(lib), layout(model)
    assert {k: info[k] for k in sizes if k in info} == {k: v for k, v in sizes.items() if k in info}
    if MODELS[i].scaling == "per_output":
        assert any(lay.out_shifts.max() > 0 for lay in model.layers)


def test_run_c_validates_pixels(packed_models, build_dir):
    lib = load_library(build_library(render_header(packed_models[0]), build_dir))
    with pytest.raises(ValueError, match=r"pixels must be uint8 \[B, 16, 16\]"):
        run_c(lib, np.zeros((2, 12, 12), np.uint8))


def test_buffer_sizes_follow_the_layer_shapes(packed_models):
    cnn = layout(packed_models[4])                        # 16x16, C=4, streamed: one channel's maps at a time
    assert cnn["map_words"] == 2 * 2 and cnn["act_bytes"] == 256               # dw2's channel, pooled; x0
    assert cnn["chan_bytes"] == 16 * 16 and cnn["feat_bytes"] == 4 * 2 * 2 + 4 + 2 * 3
    assert cnn["acc_words"] == 12                         # fc1's 12 outputs; the map and feat's 26 bytes fit
    assert cnn["ram_bytes"] == 4 * cnn["acc_words"] + cnn["act_bytes"] + cnn["chan_bytes"]
    assert cnn["trace_act_bytes"] == 256 + 4 * 14 * 14 + 4 * 6 * 6 + 4 * 2 * 2 + 12
    mix = layout(packed_models[7])                        # 16x16, C=6 with pw1: two runs around it
    assert mix["act_bytes"] == 256 + 6 * 6 * 6            # x0 and dw1's map, which pw1 rewrites in place
    assert mix["map_words"] == 6 * 6                      # dw1's pooled channel (pw1's outputs at a pixel: 6)
    assert mix["feat_bytes"] == max(6 * 2 * 2 + 6 + 2 * 1, 6 + 2 * 2, 6 + 6 * 6)   # dw2's run, dw1's, pw1's
    assert mix["start_bytes"] == 1 + 6                    # conv1 and dw1's run only: dw2 runs alone
    assert mix["trace_act_bytes"] == 256 + 6 * 14 * 14 + 6 * 6 * 6 + 6 * 6 * 6 + 6 * 2 * 2 + 10
    fc = layout(packed_models[0])                         # 256 - 24 - 16 - 10, 4bitsym, per_tensor
    assert (fc["acc_words"], fc["act_bytes"], fc["shift_bytes"]) == (24, 256, 0)
    assert fc["weight_bytes"] == 4 * (24 * 32 + 16 * 3 + 10 * 2)
    assert fc["flash_bytes"] == fc["weight_bytes"] + 3 * 32 + MODEL_BYTES
    assert (fc["chan_bytes"], fc["feat_bytes"], fc["map_words"]) == (0, 0, 0)


# ---- extreme inputs and weights under AddressSanitizer + UBSan --------------------------------------------
def _extreme_export(spec: ModelSpec, formats: tuple[str, ...], flip: bool) -> dict:
    """Every code at its format's largest magnitude and every shift as large as the bound allows."""
    layers = []
    geo = spec.geometry()
    for i, (g, fmt) in enumerate(zip(geo, formats)):
        big = max(FORMATS[fmt].codes, key=lambda c: (abs(c), -c))          # most negative of the largest |c|
        codes = np.full((g["n_out"], g["n_in"]), big, dtype=np.int64)
        if flip and -big in FORMATS[fmt].codes:
            codes[::2] = -big                                               # mixed signs across rows
        k = next(k for k in range(MAX_OUT_SHIFT, -1, -1) if layer_bound(g["n_in"], fmt, k) <= ACC_LIMIT)
        layers.append(dict(g, format=fmt, codes=codes, out_shifts=np.full(g["n_out"], k, dtype=np.int64),
                           requant=i < len(geo) - 1))
    return dict(kind=spec.kind, image_size=spec.image_size, input_zero=spec.input_zero,
                num_classes=spec.num_classes, layers=layers)


EXTREMES = [
    # fc1: 8bit, n_in 1024, k 7: |acc| reaches 2^31 - 2^24 exactly on an all-0 or all-255 image
    (ModelSpec(kind="fc", image_size=32, widths=(4, 4), input_zero=127), ("8bit", "fp130", "4bitsym"), False),
    (ModelSpec(kind="fc", image_size=32, widths=(4, 4), input_zero=0), ("8bit", "nf4", "2bitsym"), True),
    (ModelSpec(kind="cnn", image_size=16, cnn_channels=3, widths=(5,), input_zero=127),
     ("8bit", "fp130", "4bit", "ternary", "binary"), True),
    (ModelSpec(kind="cnn", image_size=13, cnn_channels=2, widths=(5,), input_zero=0),
     ("fp130", "8bit", "nf4", "4bitsym", "binarybalanced"), False),
]

_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from engine.build import load_library, run_c
    failed = 0
    for so, npz in zip(sys.argv[1::2], sys.argv[2::2]):
        ref = np.load(npz)
        got = run_c(load_library(so), ref["pixels"], trace=True)
        flat = {"logits": got["logits"], "preds": got["preds"]}
        flat.update({"act_" + n: a for n, a in got["acts"]})
        flat.update({"shift_" + n: a for n, a in got["shifts"]})
        bad = [k for k in ref.files if k != "pixels" and (k not in flat or not np.array_equal(flat[k], ref[k]))]
        print(npz, "mismatch:", bad if bad else "none")
        failed += bool(bad)
    sys.exit(1 if failed else 0)
""")


def _asan_available() -> bool:
    lib = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return Path(lib).is_file()


needs_asan = pytest.mark.skipif(not _asan_available(), reason="gcc has no libasan.so: sanitizer tests skipped")


def _sanitized_python(args: list[str], code: str) -> subprocess.CompletedProcess:
    """python -c code in a subprocess that can load sanitize=True modules: libasan preloaded, leaks off."""
    env = sanitizer_env()
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


@needs_asan
def test_models_clean_under_sanitizers(packed_models, build_dir, tmp_path):
    """Every format at its largest codes and shifts (all-0 and all-255 images reach the int32 bound), and a
    random per_output CNN: C under -fsanitize=address,undefined equals refimpl on every layer, no report."""
    cases = [(from_export(_extreme_export(s, f, flip)), f"extreme{i}") for i, (s, f, flip) in enumerate(EXTREMES)]
    cases.append((packed_models[5], "cnn_mixed"))
    args = []
    for model, name in cases:
        n = model.image_size
        px = np.concatenate([np.zeros((1, n, n), np.uint8), np.full((1, n, n), 255, np.uint8), _pixels(n, 7)[:6]])
        want = run(model, px)
        ref = {"pixels": px, "logits": want["logits"], "preds": want["preds"]}
        ref.update({f"act_{a}": v for a, v in want["acts"]})
        ref.update({f"shift_{a}": v for a, v in want["shifts"]})
        np.savez(tmp_path / f"{name}.npz", **ref)
        for define in KERNELS.values():
            so = build_library(render_header(model), build_dir, sanitize=True, defines=[define])
            args += [str(so), str(tmp_path / f"{name}.npz")]
    res = _sanitized_python(args, _CHILD)
    assert res.returncode == 0 and res.stdout.count("mismatch: none") == len(cases) * len(KERNELS), \
        f"{res.stdout}\n{res.stderr[-3000:]}"
    assert "runtime error" not in res.stderr and "AddressSanitizer" not in res.stderr, res.stderr[-3000:]


def test_extreme_model_reaches_the_accumulator_bound():
    model = from_export(_extreme_export(*EXTREMES[0]))
    assert model.layers[0].out_shifts.max() == 7
    assert layer_bound(1024, "8bit", 7) == ACC_LIMIT
    px = np.zeros((1, 32, 32), np.uint8)                 # x0 = -127 everywhere; codes -128; k = 7
    assert run(model, px)["shifts"][0][1].tolist() == [24]


@needs_asan
def test_sanitizer_harness_catches_errors(build_dir):
    """Positive control: the same subprocess set-up reports an out-of-bounds read and a signed overflow."""
    so = build_kernel_library(build_dir, sanitize=True)
    child = textwrap.dedent("""
        import sys
        import numpy as np
        from engine.build import load_library
        k = load_library(sys.argv[1])
        f = k.ffi.from_buffer
        if sys.argv[2] == "oob":      # 32 8bit codes (row_words 8) read from a 2-word buffer
            w, x, o = np.zeros(2, np.uint32), np.zeros(32, np.int8), np.zeros(1, np.int32)
            k.lib.bm_fc(f("int8_t[]", x), 32, f("uint32_t[]", w), 8, 6, 1, k.ffi.NULL, 0, f("int32_t[]", o))
        else:                         # y beyond the contract's bound: y + half overflows int32
            y, o = np.array([2**31 - 1], np.int32), np.zeros(1, np.int8)
            k.lib.bm_shiftnorm(f("int32_t[]", y), 1, f("int8_t[]", o))
        print("survived")
    """)
    for mode, msg in (("oob", "AddressSanitizer"), ("overflow", "runtime error")):
        res = _sanitized_python([str(so), mode], child)
        assert res.returncode != 0 and "survived" not in res.stdout and msg in res.stderr, (mode, res.stderr[-2000:])


# ---- streamed CNNs: conv1, then any number of depthwise layers, a pool after any of them ------------------
# (image size, channels, pool after each conv layer): odd and even maps, 1 to 7 channels, 1 to 5 conv layers,
# final maps 1x1 to 7x7. The export makes (N, C, (0, 1, 1)); the C driver and header.py take any such chain.
CNN_TABLES = [(9, 3, (0,)), (11, 2, (1,)), (19, 5, (0, 1, 0, 1)), (16, 6, (1, 0, 1)), (13, 4, (0, 0, 0, 0, 0)),
              (8, 3, (0, 1)), (12, 1, (0, 1, 1)), (17, 7, (0, 1, 1))]
CNN_TABLE_IDS = [f"n{n}-c{c}-pools{''.join(map(str, p))}" for n, c, p in CNN_TABLES]


def _cnn_table_export(n: int, c: int, pools: tuple[int, ...], seed: int, fmts: tuple[str, ...] = EXPORTABLE) -> dict:
    """conv1 and len(pools) - 1 depthwise layers, then 1 or 2 fc layers; each layer a random format of fmts,
    random codes and random per-output shifts up to the largest the bound allows (an export_model() dict)."""
    rng = np.random.default_rng(seed)
    layers, h = [], n
    for j, pool in enumerate(pools):
        out = (h - 2) // 2 if pool else h - 2
        layers.append(dict(name=f"conv{j + 1}", kind="dwconv" if j else "conv", n_out=c, n_in=9, groups=c if j else 1,
                           in_shape=(c if j else 1, h, h), out_shape=(c, out, out), pool=bool(pool)))
        h = out
    dims = [c * h * h, *rng.integers(3, 10, int(rng.integers(0, 2))).tolist(), int(rng.integers(2, 11))]
    for i in range(len(dims) - 1):
        layers.append(dict(name=f"fc{i + 1}", kind="fc", n_out=dims[i + 1], n_in=dims[i], groups=1,
                           in_shape=(dims[i],), out_shape=(dims[i + 1],), pool=False))
    for i, lay in enumerate(layers):
        fmt = str(rng.choice(fmts))
        top = max(k for k in range(MAX_OUT_SHIFT + 1) if layer_bound(lay["n_in"], fmt, k) <= ACC_LIMIT)
        codes = rng.choice(np.array(FORMATS[fmt].codes, dtype=np.int64), (lay["n_out"], lay["n_in"]))
        lay.update(format=fmt, codes=codes, out_shifts=rng.integers(0, top + 1, lay["n_out"]),
                   requant=i < len(layers) - 1)
    return dict(kind="cnn", image_size=n, input_zero=int(rng.integers(0, 128)), num_classes=dims[-1], layers=layers)


@pytest.fixture(scope="session")
def cnn_tables():
    return [from_export(_cnn_table_export(n, c, pools, seed=i)) for i, (n, c, pools) in enumerate(CNN_TABLES)]


@pytest.mark.parametrize("i", range(len(CNN_TABLES)), ids=CNN_TABLE_IDS)
def test_streamed_cnn_matches_refimpl(i, cnn_tables, build_dir):
    """Every layer, shift and logit equals refimpl, whatever ran before: the driver reuses the previous run's
    shifts as guesses, so the images run forwards, backwards and each twice in a row."""
    model = cnn_tables[i]
    lib = load_library(build_library(render_header(model), build_dir))
    px = _pixels(model.image_size, seed=100 + i)
    for order in (px, px[::-1], np.repeat(px, 2, axis=0)):
        assert_same_run(run_c(lib, order, trace=True), run(model, order))
    assert np.array_equal(run_c(lib, px, trace=False)["logits"], run(model, px)["logits"])
    info, sizes = model_info(lib), layout(model)
    assert {k: info[k] for k in sizes if k in info} == {k: v for k, v in sizes.items() if k in info}


MULFREE_FORMATS = tuple(f for f in EXPORTABLE if FORMATS[f].multiplier_free)


@pytest.mark.parametrize("kernels", ["ref", "fast"])
def test_streamed_cnn_multiplier_free_matches_refimpl(kernels, build_dir):
    """BM_CFG_NO_MULTIPLY (the CH32V003): the conv kernels gather each window for the row dot products instead of
    multiplying decoded weights; same results on every layer, conv1 with and without a pool, odd and even maps."""
    for i, (n, c, pools) in enumerate(CNN_TABLES):
        model = from_export(_cnn_table_export(n, c, pools, seed=50 + i, fmts=MULFREE_FORMATS))
        lib = load_library(build_library(render_header(model), build_dir,
                                         defines=["BM_CFG_NO_MULTIPLY", KERNELS[kernels]]))
        px = _pixels(n, seed=200 + i)
        for order in (px, px[::-1]):
            assert_same_run(run_c(lib, order, trace=True), run(model, order))


@pytest.mark.parametrize("mul", ["multiply", "no_multiply"])
def test_fc_tables_in_the_conv_map(mul, build_dir):
    """BM_CFG_CHAN_BYTES (a CNN firmware passes its model's: mcu/build.py): where the conv layers' map holds the
    fc column tables, bm_run builds them there, dead by then, and where it does not, on the stack; the same
    values on every layer either way. A build told of a larger map than the model it is given has (a single
    conv layer has none, a 13x13 map 169 bytes) refuses that model instead of overrunning its map."""
    seen = set()
    for i, (n, c, pools) in enumerate(CNN_TABLES):
        model = from_export(_cnn_table_export(n, c, pools, seed=70 + i,
                                              fmts=MULFREE_FORMATS if mul == "no_multiply" else EXPORTABLE))
        chan = layout(model)["chan_bytes"]
        px = _pixels(n, seed=300 + i)
        want = run(model, px)
        mulfree = ["BM_CFG_NO_MULTIPLY"] if mul == "no_multiply" else []
        own = load_library(build_library(render_header(model), build_dir,
                                         defines=[f"BM_CFG_CHAN_BYTES={chan}", *mulfree]))
        assert_same_run(run_c(own, px, trace=True), want)
        seen.add(chan >= 256)
        if chan < 256:
            told = load_library(build_library(render_header(model), build_dir,
                                              defines=["BM_CFG_CHAN_BYTES=256", *mulfree]))
            with pytest.raises(RuntimeError, match="BM_ERR_ARG"):
                run_c(told, px)
    assert seen == {True, False}


MULFREE_EXTREMES = [
    (ModelSpec(kind="cnn", image_size=16, cnn_channels=3, widths=(5,), input_zero=127),
     ("fp130", "4bitsym", "ternary", "2bitsym", "binary"), True),
    (ModelSpec(kind="cnn", image_size=13, cnn_channels=2, widths=(5,), input_zero=0),
     ("4bitsym", "fp130", "2bitsym", "binarybalanced", "fp130"), False),
]


@needs_asan
def test_streamed_cnn_multiplier_free_clean_under_sanitizers(build_dir, tmp_path):
    """BM_CFG_NO_MULTIPLY's shift-term conv kernels (wrapping uint32 sums of sign-extended inputs) under
    -fsanitize=address,undefined equal refimpl on every layer, no report: every multiplier-free format at its
    largest codes and shifts (an all-0 image with input_zero 127 gives conv1 x0 = -127 everywhere), and random
    multiplier-free tables (4bitsym channels with and without an 11 or 13)."""
    models = [from_export(_extreme_export(s, f, flip)) for s, f, flip in MULFREE_EXTREMES]
    models += [from_export(_cnn_table_export(n, c, pools, seed=70 + i, fmts=MULFREE_FORMATS))
               for i, (n, c, pools) in enumerate(CNN_TABLES[:4])]
    args = []
    for i, model in enumerate(models):
        n = model.image_size
        px = np.concatenate([np.zeros((1, n, n), np.uint8), np.full((1, n, n), 255, np.uint8), _pixels(n, i)[:6]])
        want = run(model, px)
        ref = {"pixels": px, "logits": want["logits"], "preds": want["preds"]}
        ref.update({f"act_{a}": v for a, v in want["acts"]})
        ref.update({f"shift_{a}": v for a, v in want["shifts"]})
        np.savez(tmp_path / f"mulfree{i}.npz", **ref)
        so = build_library(render_header(model), build_dir, sanitize=True, defines=["BM_CFG_NO_MULTIPLY"])
        args += [str(so), str(tmp_path / f"mulfree{i}.npz")]
    res = _sanitized_python(args, _CHILD)
    assert res.returncode == 0 and res.stdout.count("mismatch: none") == len(models), \
        f"{res.stdout}\n{res.stderr[-3000:]}"
    assert "runtime error" not in res.stderr and "AddressSanitizer" not in res.stderr, res.stderr[-3000:]


@pytest.mark.parametrize("table,define", [(3, "BM_ACC_WORDS"), (0, "BM_ACT_BYTES"), (3, "BM_CHAN_BYTES"),
                                          (3, "BM_FEAT_BYTES"), (3, "BM_MAP_WORDS")])
def test_streamed_cnn_buffers_are_no_larger_than_needed(cnn_tables, build_dir, table, define):
    """One element less than header.py's layout in any buffer and bm_run refuses the model (the sanitizer
    test shows that the layout is enough): acc too short for the feat behind its map, or a map that would
    reach feat."""
    text = render_header(cnn_tables[table])
    patched = re.sub(rf"#define {define} (\d+)", lambda mt: f"#define {define} {int(mt[1]) - 1}", text, count=1)
    assert patched != text
    with pytest.raises(RuntimeError, match="BM_ERR_ARG"):
        run_c(load_library(build_library(patched, build_dir)), _pixels(cnn_tables[table].image_size, 0))


@needs_asan
def test_streamed_cnn_clean_under_sanitizers(cnn_tables, build_dir, tmp_path):
    """Streamed CNNs under -fsanitize=address,undefined equal refimpl on every layer: buffers sized exactly
    by layout (a single pooled conv layer: no working map at all), and a feat buffer that starts full of 0xFF
    (guessed shifts beyond ShiftNorm's 24, hot channels beyond C)."""
    args = []
    for i in (1, 2, 4, 6, 7):
        model = cnn_tables[i]
        n = model.image_size
        px = np.concatenate([np.zeros((1, n, n), np.uint8), np.full((1, n, n), 255, np.uint8), _pixels(n, i)[:6]])
        want = run(model, px)
        ref = {"pixels": px, "logits": want["logits"], "preds": want["preds"]}
        ref.update({f"act_{a}": v for a, v in want["acts"]})
        ref.update({f"shift_{a}": v for a, v in want["shifts"]})
        np.savez(tmp_path / f"table{i}.npz", **ref)
        text = render_header(model)
        if i == 4:
            fill = ", ".join(["-1"] * layout(model)["acc_words"])      # feat lies in acc, behind the map
            text = text.replace("bm_acc_buf[BM_ACC_WORDS];", f"bm_acc_buf[BM_ACC_WORDS] = {{{fill}}};")
            assert fill in text
        args += [str(build_library(text, build_dir, sanitize=True)), str(tmp_path / f"table{i}.npz")]
    res = _sanitized_python(args, _CHILD)
    assert res.returncode == 0 and res.stdout.count("mismatch: none") == 5, f"{res.stdout}\n{res.stderr[-3000:]}"
    assert "runtime error" not in res.stderr and "AddressSanitizer" not in res.stderr, res.stderr[-3000:]

# ---- the generated header ---------------------------------------------------------------------------------
def test_header_is_deterministic(packed_models):
    spec = MODELS[5]
    again = from_export(random_model(spec, seed=len(spec.formats) * 31 + spec.image_size).export_model())
    h1, h2, h3 = render_header(packed_models[5]), render_header(packed_models[5]), render_header(again)
    assert h1 == h2 == h3
    for bad in (str(ROOT), "/tmp", "/home", "/root", "/usr", str(Path.cwd())):
        assert bad not in h1
    assert h1.isascii() and "#include \"bitmcu.h\"" in h1 and h1.endswith("#endif /* BITMCU_MODEL_H */\n")
    for name, lay in zip(("conv1", "fc1"), (packed_models[5].layers[0], packed_models[5].layers[3])):
        block = re.search(rf"static const uint32_t bm_w_{name}\[(\d+)\] = {{\n(.*?)\n}};", h1, re.S)
        lines = block[2].split("\n")                      # 8 words a line, "0x" + 8 hex digits each
        assert all(re.fullmatch(r"    (0x[0-9a-f]{8}, ){0,7}0x[0-9a-f]{8},?", line) for line in lines)
        assert [int(v, 16) for v in re.findall(r"0x[0-9a-f]{8}", block[2])] == lay.words.tolist()
        assert int(block[1]) == lay.words.size and len(lines) == -(-lay.words.size // 8)


def test_header_rejects_what_bm_layer_cannot_hold(packed_models):
    good = packed_models[0]
    model = replace(good, layers=[replace(good.layers[0], name="fc-1"), *good.layers[1:]])
    with pytest.raises(ValueError, match="C identifier"):
        render_header(model)
    bad = replace(good, layers=[replace(good.layers[0], format="none"), *good.layers[1:]])
    with pytest.raises(ValueError, match="format"):
        render_header(bad)


def test_unknown_format_id_in_the_table_returns_err_format(packed_models, build_dir):
    text = render_header(packed_models[0])                         # fc, 4bitsym everywhere
    patched = text.replace("BM_OP_FC, BM_FMT_4BITSYM, 0},", "BM_OP_FC, 9, 0},", 1)
    assert patched != text
    lib = load_library(build_library(patched, build_dir))
    with pytest.raises(RuntimeError, match="BM_ERR_FORMAT"):
        run_c(lib, np.zeros((2, 16, 16), np.uint8))


@pytest.mark.parametrize("defines,msg", [
    ([f"BM_CFG_FORMATS={MULFREE:#x}"], "format 8bit (layers conv1, dw1, dw2) is not compiled in"),
    (["BM_CFG_NO_MULTIPLY"], "format 8bit (layers conv1, dw1, dw2) is not compiled in"),
    (["BM_CFG_NO_MULTIPLY", "BM_CFG_FORMATS=0x1FF"], "BM_CFG_NO_MULTIPLY forbids format 4bit"),
    ([f"BM_CFG_CONV_FORMATS={1 << FORMAT_IDS['2bitsym']:#x}"],
     "format 8bit (layers conv1, dw1, dw2) is left out of BM_CFG_CONV_FORMATS"),
    ([f"BM_CFG_FC_FORMATS={1 << FORMAT_IDS['8bit'] | 1 << FORMAT_IDS['4bitsym']:#x}"],
     "format 2bitsym (layers fc1) is left out of BM_CFG_FC_FORMATS"),
    (["BM_CFG_FORMATS=0x40", "BM_CFG_FC_FORMATS=0x48"], "must be subsets of BM_CFG_FORMATS"),
])
def test_header_with_a_format_left_out_fails_to_compile(packed_models, build_dir, defines, msg):
    with pytest.raises(RuntimeError, match=re.escape(msg)):
        build_library(render_header(packed_models[4]), build_dir, defines=defines)


@pytest.mark.parametrize("kernels", list(KERNELS))
def test_multiplier_free_model_builds_without_multiply_formats(packed_models, build_dir, kernels):
    model = packed_models[1]                                       # binary, ternary, 2bitsym, fp130
    lib = load_library(build_library(render_header(model), build_dir,
                                     defines=["BM_CFG_NO_MULTIPLY", KERNELS[kernels]]))
    px = _pixels(model.image_size, seed=3)
    assert_same_run(run_c(lib, px), run(model, px))


# ---- RV32EC: the multiplier-free build has no mul/div instruction and no libcall --------------------------
# -ffreestanding: Debian's bare-metal compiler ships no libc headers, and <stdint.h> then comes from gcc itself.
RV_FLAGS = ["-march=rv32ec_zicsr", "-mabi=ilp32e", "-ffreestanding", "-std=c99", "-Wall", "-Wextra", "-Werror",
            "-pedantic"]
MUL_DIV = re.compile(r"\b(mul|mulh|mulhu|mulhsu|div|divu|rem|remu)\b|__(u?mul|u?div|u?mod)[sd]i3")


def _rv_disasm(src: Path, out: Path, opt: str, defines: list[str], include: list[Path]) -> str:
    cmd = [RV_CC, *RV_FLAGS, opt, *(f"-D{d}" for d in defines), *(f"-I{p}" for p in include), "-c", str(src),
           "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr}"
    return subprocess.run([RV_OBJDUMP, "-dr", str(out)], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.riscv
@pytest.mark.parametrize("kernels", list(KERNELS))
@pytest.mark.parametrize("opt", ["-Os", "-O2"])
def test_rv32ec_multiplier_free_build_has_no_multiply(tmp_path, opt, kernels, packed_models):
    asm = _rv_disasm(ENGINE_DIR / "bitmcu.c", tmp_path / "bitmcu.o", opt,
                     ["BM_CFG_NO_MULTIPLY", f"BM_CFG_FORMATS={MULFREE:#x}", KERNELS[kernels]], [ENGINE_DIR])
    hits = [line for line in asm.splitlines() if MUL_DIV.search(line)]
    assert not hits, "\n".join(hits[:20])
    # the model driver with a generated table, and the ilp32e struct sizes header.py counts in BM_FLASH_BYTES
    (tmp_path / "bm_model.h").write_text(render_header(packed_models[1]))
    (tmp_path / "fw.c").write_text(textwrap.dedent("""
        #include "bm_model.h"
        typedef char layer_size_is_32[sizeof(bm_layer) == 32 ? 1 : -1];
        typedef char model_size_matches_header_py[sizeof(bm_model) == MODEL_BYTES ? 1 : -1];
        int32_t classify(const uint8_t *pixels);
        int32_t classify(const uint8_t *pixels)
        {
            int32_t logits[BM_NUM_CLASSES];
            return bm_run(BM_MODEL, pixels, NULL, logits) == BM_OK ? bm_argmax(logits, BM_NUM_CLASSES) : -1;
        }
    """).replace("MODEL_BYTES", str(MODEL_BYTES)))
    asm = _rv_disasm(tmp_path / "fw.c", tmp_path / "fw.o", opt, ["BM_CFG_NO_MULTIPLY", KERNELS[kernels]],
                     [ENGINE_DIR, tmp_path])
    hits = [line for line in asm.splitlines() if MUL_DIV.search(line)]
    assert not hits, "\n".join(hits[:20])


@pytest.mark.riscv
def test_rv32ec_scan_sees_the_multiply_formats(tmp_path):
    """Control for the scan above: 4bit, 8bit and nf4 do call __mulsi3 on RV32EC."""
    asm = _rv_disasm(ENGINE_DIR / "bitmcu.c", tmp_path / "all.o", "-Os", [], [ENGINE_DIR])
    assert "__mulsi3" in asm
