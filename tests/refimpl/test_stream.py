"""refimpl/stream.py, the Python twin of the C engine's streaming CNN driver, against the C library: random CNN
models, a sequence of images per model, and after every run the same logits, trace (every requantized layer and
shift) and driver state (bm_model.feat: cached bytes, exponents, guessed and measured shifts, hot channels); and
start_state's start taking one pass on the image it came from."""
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from engine.build import build_library, load_library, model_info
from engine.header import render_header
from refimpl import stream
from contract.model import from_export
from refimpl.model import run
from tests.strategies import MODEL_SPECS, random_model

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None,
                                reason="gcc not found: the C engine tests need a host C compiler")

CNN_SPECS = [s for s in MODEL_SPECS if s.kind == "cnn"]
_LIBS: dict[tuple[int, int], tuple[dict, object]] = {}


@pytest.fixture(scope="session")
def stream_build_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bitmcu_stream")


def _model_and_lib(spec_i: int, seed: int, build_dir: Path):
    """The packed model and its C library, built once per (spec, seed): the library's feat persists. Seed 0
    keeps the empty start (guesses 0), the others take start_state's of a few random images."""
    if (spec_i, seed) not in _LIBS:
        model = from_export(random_model(CNN_SPECS[spec_i], seed).export_model())
        if seed:
            n = model.image_size
            model.stream_start = stream.start_state(
                model, np.random.default_rng(seed).integers(0, 256, (8, n, n), dtype=np.uint8))
        _LIBS[spec_i, seed] = model, load_library(build_library(render_header(model), build_dir))
    return _LIBS[spec_i, seed]


def _c_run(lib, pixels: np.ndarray) -> dict:
    """One bm_run through the glue: logits, the flat trace, its shifts and feat afterwards."""
    ffi, c = lib.ffi, lib.lib
    info = model_info(lib)
    acts = np.zeros(info["trace_act_bytes"], dtype=np.int8)
    shifts = np.zeros(max(info["n_shifts"], 1), dtype=np.int32)
    logits = np.zeros(info["num_classes"], dtype=np.int32)
    preds = np.zeros(1, dtype=np.int32)
    p = np.ascontiguousarray(pixels, dtype=np.uint8)
    assert c.bm_glue_run_batch(ffi.from_buffer("uint8_t[]", p), 1, ffi.from_buffer("int8_t[]", acts),
                               ffi.from_buffer("int32_t[]", shifts), ffi.from_buffer("int32_t[]", logits),
                               ffi.from_buffer("int32_t[]", preds)) == 0
    return dict(logits=logits, acts=acts, shifts=shifts[:info["n_shifts"]], feat=_c_feat(lib))


def _c_feat(lib, set_to: np.ndarray | None = None) -> np.ndarray:
    ffi, c = lib.ffi, lib.lib
    size = c.bm_glue_feat(ffi.NULL, ffi.NULL)
    got = np.zeros(size, dtype=np.uint8)
    c.bm_glue_feat(ffi.NULL if set_to is None else ffi.from_buffer("uint8_t[]", set_to),
                   ffi.from_buffer("uint8_t[]", got))
    return got


@st.composite
def images(draw, n: int) -> np.ndarray:
    """A uint8 [n, n] image: blank, saturated, sparse strokes or noise (shifts that move between runs)."""
    kind = draw(st.sampled_from(("zero", "full", "strokes", "noise")))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if kind == "zero":
        return np.zeros((n, n), np.uint8)
    if kind == "full":
        return np.full((n, n), 255, np.uint8)
    if kind == "strokes":
        return (rng.random((n, n)) < draw(st.sampled_from((0.05, 0.2, 0.5)))).astype(np.uint8) * 255
    return rng.integers(0, 256, (n, n), dtype=np.uint8)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, len(CNN_SPECS) - 1), st.integers(0, 2), st.data())
def test_stream_twin_matches_the_c_driver(stream_build_dir, spec_i, seed, data):
    model, lib = _model_and_lib(spec_i, seed, stream_build_dir)
    n = model.image_size
    feat = _c_feat(lib)                                 # whatever earlier examples left, or a drawn state
    if data.draw(st.booleans(), label="drawn start state"):
        feat = np.array(data.draw(st.lists(st.integers(0, 255), min_size=feat.size, max_size=feat.size)),
                        dtype=np.uint8)
        _c_feat(lib, feat)
    seq = [data.draw(images(n), label=f"image {i}") for i in range(data.draw(st.integers(1, 5)))]
    for i, px in enumerate(seq):
        c = _c_run(lib, px)
        twin = stream.run(model, px, feat)
        note(f"image {i}: {twin['passes']} passes, shifts {twin['shifts']}")
        assert np.array_equal(twin["logits"], c["logits"]), i
        assert np.array_equal(twin["acts"], c["acts"]), i
        assert twin["shifts"] == c["shifts"].tolist(), i
        assert np.array_equal(feat, c["feat"]), (i, feat.tolist(), c["feat"].tolist())
        assert np.array_equal(twin["logits"], run(model, px[None])["logits"][0]), i   # and the whole-map engine


@settings(max_examples=20, deadline=None)
@given(st.integers(0, len(CNN_SPECS) - 1), st.integers(0, 2), st.data())
def test_start_state_of_an_image_runs_it_in_one_pass(spec_i, seed, data):
    model = from_export(random_model(CNN_SPECS[spec_i], seed).export_model())
    px = data.draw(images(model.image_size), label="image")
    cold = stream.run(model, px, stream.new_feat(model))
    model.stream_start = stream.start_state(model, px[None])
    model.check()
    warm = stream.run(model, px, stream.new_feat(model))
    assert warm["passes"] == 1, (model.stream_start, cold["passes"])
    assert np.array_equal(warm["logits"], cold["logits"]) and warm["shifts"] == cold["shifts"]
