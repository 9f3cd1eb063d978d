"""refimpl: numba kernels on packed words == tests/naive.py on codes; refimpl.model.run == QModel.int_eval."""
import numpy as np
import pytest
import torch
from hypothesis import example, given, note, settings
from hypothesis import strategies as st

from contract.packing import field_to_code, pack, unpack
from contract.formats import FORMAT_IDS, FORMATS
from contract.spec import ACC_LIMIT
from refimpl import kernels as K
from contract.model import from_export
from refimpl.model import run
from tests import naive
from tests.strategies import (EXPORTABLE, MODEL_SPECS, codes, conv_cases, fc_cases, formats, random_model,
                              shiftnorm_inputs)

FEW = settings(max_examples=30, deadline=None)


def _fc(case):
    words, rw = pack(case["codes"], case["fmt"])
    out = np.empty((case["x"].shape[0], case["codes"].shape[0]), dtype=np.int64)
    K.fc(case["x"], words, rw, FORMAT_IDS[case["fmt"]], case["codes"].shape[0], case["out_shifts"],
               case["relu"], out)
    return out


def _first_diff(got, want):
    g, w = np.asarray(got), np.asarray(want)
    bad = np.argwhere(g != w)
    return f"{len(bad)} differ; first at {tuple(bad[0])}: got {g[tuple(bad[0])]} want {w[tuple(bad[0])]}" \
        if len(bad) else "equal"


def test_format_ids_cover_every_exportable_format():
    assert sorted(FORMAT_IDS) == sorted(EXPORTABLE)
    assert sorted(FORMAT_IDS.values()) == list(range(len(EXPORTABLE)))


@pytest.mark.parametrize("fmt", [f for f in EXPORTABLE if f != "ternary"])
def test_kernel_literals_follow_the_format_table(fmt):
    """The numba kernels spell each format's id and code values as literals: they decode every field of
    the table's field width to exactly the code contract.packing gives it."""
    fields = np.arange(1 << FORMATS[fmt].field_bits)
    want = field_to_code(fields, fmt)
    got = [K.field_value(FORMAT_IDS[fmt], int(f)) for f in fields]
    assert got == want.tolist()


@FEW
@given(st.data())
def test_decode_row_matches_unpack(data):
    fmt = data.draw(formats())
    n_out, n_in = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 70))
    c = data.draw(codes(fmt, n_out, n_in))
    words, rw = pack(c, fmt)
    for o in range(n_out):
        w = np.empty(n_in, dtype=np.int64)
        K.decode_row(words, o * rw, n_in, FORMAT_IDS[fmt], w)
        assert np.array_equal(w, c[o]) and np.array_equal(w, unpack(words, fmt, n_out, n_in)[o])


@settings(max_examples=60, deadline=None)
@given(fc_cases())
def test_fc_layer_matches_naive(case):
    got = _fc(case)
    want = naive.fc(case["x"].tolist(), case["codes"].tolist(), case["out_shifts"].tolist(), case["relu"])
    note(f"{case['fmt']} {case['codes'].shape}: {_first_diff(got, want)}")
    assert got.tolist() == want


@settings(max_examples=40, deadline=None)
@given(conv_cases())
def test_conv_layer_matches_naive(case):
    x, c, fmt = case["x"], case["codes"], case["fmt"]
    words, rw = pack(c, fmt)
    out = np.empty((x.shape[0], c.shape[0], x.shape[2] - 2, x.shape[3] - 2), dtype=np.int64)
    K.conv3x3(x, words, rw, FORMAT_IDS[fmt], c.shape[0], case["groups"], case["out_shifts"], case["relu"], out)
    want = naive.conv3x3(x.tolist(), c.tolist(), case["groups"], case["out_shifts"].tolist(), case["relu"])
    note(f"{fmt} groups {case['groups']} x {x.shape}: {_first_diff(out, want)}")
    assert out.tolist() == want


@FEW
@given(st.integers(1, 2), st.integers(1, 3), st.integers(2, 7), st.integers(2, 7), st.data())
def test_maxpool2_matches_naive(b, c, h, w, data):
    vals = data.draw(st.lists(st.integers(0, ACC_LIMIT), min_size=b * c * h * w, max_size=b * c * h * w))
    y = np.array(vals, dtype=np.int64).reshape(b, c, h, w)
    out = np.empty((b, c, h // 2, w // 2), dtype=np.int64)
    K.maxpool2(y, out)
    assert out.tolist() == naive.maxpool2(y.tolist())


def _shiftnorm(y):
    out, s = np.empty(y.shape, dtype=np.int8), np.empty(y.shape[0], dtype=np.int64)
    K.shiftnorm(y, out, s)
    return out, s


@settings(max_examples=60, deadline=None)
@given(shiftnorm_inputs())
@example(np.zeros((2, 5), dtype=np.int64))                              # s = 0, all outputs 0
@example(np.array([[ACC_LIMIT, ACC_LIMIT // 2, 1]], dtype=np.int64))    # largest shift s = 24
@example(np.array([[255, 254, 1]], dtype=np.int64))                     # (255 + 1) >> 1 = 128 -> clamp 127
def test_shiftnorm_matches_naive(y):
    out, s = _shiftnorm(y)
    want_out, want_s = naive.shiftnorm(y.tolist())
    assert out.tolist() == want_out and s.tolist() == want_s
    assert 0 <= out.min() and out.max() <= 127 and 0 <= s.min() and s.max() <= 24


def test_shiftnorm_edges():
    out, s = _shiftnorm(np.array([[0, 0], [127, 3], [128, 1], [ACC_LIMIT, 1 << 23]], dtype=np.int64))
    assert s.tolist() == [0, 0, 1, 24]
    assert out.tolist() == [[0, 0], [127, 3], [64, 1], [127, 1]]        # 2^23 rounds half up to 1


def test_extreme_fc_accumulator_reaches_the_bound():
    """8bit, n_in 1024, k 7: |acc| = 1024*127*128*2^7 = 2^31 - 2^24 exactly; ShiftNorm then needs s = 24."""
    n = 1024
    x = np.full((2, n), -127, dtype=np.int8)
    x[1] = 127
    case = dict(fmt="8bit", codes=np.full((2, n), -128, dtype=np.int64), x=x,
                out_shifts=np.array([7, 0], dtype=np.uint8), relu=False)
    got = _fc(case)
    assert got.tolist() == [[ACC_LIMIT, ACC_LIMIT >> 7], [-ACC_LIMIT, -(ACC_LIMIT >> 7)]]
    case["relu"] = True
    y = _fc(case)
    out, s = _shiftnorm(y)
    assert y.tolist() == [[ACC_LIMIT, ACC_LIMIT >> 7], [0, 0]]
    assert s.tolist() == [24, 0] and out.tolist() == [[127, 1], [0, 0]]


@pytest.mark.parametrize("fmt", EXPORTABLE)
def test_all_zero_input(fmt):
    c = np.full((3, 25), FORMATS[fmt].codes[-1], dtype=np.int64)
    y = _fc(dict(fmt=fmt, codes=c, x=np.zeros((2, 25), np.int8), out_shifts=np.full(3, 7, np.uint8), relu=True))
    out, s = _shiftnorm(y)
    assert not y.any() and not out.any() and not s.any()


def test_input_map_every_pixel():
    p = np.arange(256, dtype=np.uint8).reshape(1, 256)
    for z in (0, 16, 127):
        out = np.empty((1, 256), dtype=np.int8)
        K.input(p, z, out)
        assert out.tolist() == naive.input(p.tolist(), z)
        assert out.min() == -z and out.max() == 127 - z


@FEW
@given(st.lists(st.lists(st.integers(-3, 3), min_size=2, max_size=6), min_size=1, max_size=4).filter(
    lambda rows: len({len(r) for r in rows}) == 1))
@example([[5, 5, 5], [-1, 7, 7], [0, 0, 1], [2**31 - 2**24, -5, 2**31 - 2**24]])
def test_argmax_ties_go_to_lowest_index(rows):
    logits = np.array(rows, dtype=np.int64)
    out = np.empty(len(rows), dtype=np.int64)
    K.argmax(logits, out)
    assert out.tolist() == naive.argmax(rows)
    assert out.tolist() == [int(np.argmax(r)) for r in logits]           # numpy also takes the first


# ---- whole models against the PyTorch integer reference -----------------------------------------
MODELS = MODEL_SPECS


@pytest.mark.parametrize("spec", MODELS, ids=[f"{s.kind}-{s.image_size}-{'-'.join(s.formats)}-{s.scaling}"
                                              for s in MODELS])
def test_run_matches_int_eval(spec, monkeypatch):
    monkeypatch.setattr("refimpl.model.CHUNK", 7)                       # 26 images: 3 full chunks + 5
    m = random_model(spec, seed=len(spec.formats) * 31 + spec.image_size)
    exp = m.export_model()
    n = spec.image_size
    rng = np.random.default_rng(spec.image_size)
    px = rng.integers(0, 256, (24, n, n), dtype=np.uint8)
    px[:8] *= rng.random((8, n, n)) < 0.2                              # sparse, MNIST-like
    px = np.concatenate([px, np.zeros((1, n, n), np.uint8), np.full((1, n, n), 255, np.uint8)])
    got = run(from_export(exp), px)
    ref = m.int_eval(torch.from_numpy(px))
    assert [a for a, _ in got["acts"]] == [a for a, _ in ref.acts]
    assert [a for a, _ in got["shifts"]] == [a for a, _ in ref.shifts]
    for (name, a), (_, r) in zip(got["acts"] + got["shifts"], ref.acts + ref.shifts):
        assert a.shape == tuple(r.shape), name
        assert np.array_equal(a, r.numpy()), f"{name}: {_first_diff(a, r.numpy())}"
    assert np.array_equal(got["logits"], ref.logits.numpy())
    assert got["preds"].tolist() == naive.argmax(ref.logits.tolist())
    if spec.scaling == "per_output":
        assert any(lay["out_shifts"].max() > 0 for lay in exp["layers"])


def test_run_validates_inputs():
    m = random_model(MODELS[0], 0)
    model = from_export(m.export_model())
    ok = np.zeros((2, 16, 16), np.uint8)
    with pytest.raises(ValueError, match="pixels: must be uint8"):
        run(model, ok.astype(np.int16))
    with pytest.raises(ValueError, match=r"pixels: must be uint8 \[B, 16, 16\]"):
        run(model, ok[:, :12, :12])
    bad = from_export(m.export_model())
    bad.layers[1].words = bad.layers[1].words[:-1]
    with pytest.raises(ValueError, match="layer fc2: words must be uint32"):
        run(bad, ok)
    bad = from_export(m.export_model())
    bad.layers[0].out_shifts = bad.layers[0].out_shifts + 8
    with pytest.raises(ValueError, match="layer fc1: out_shifts"):
        run(bad, ok)
    bad = from_export(m.export_model())
    bad.layers[0].format = "none"
    with pytest.raises(ValueError, match="layer fc1: format"):
        run(bad, ok)
    assert run(model, ok[:0])["logits"].shape == (0, 10)
