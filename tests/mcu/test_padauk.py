"""mcu/padauk: the SDCC engine built for the PMS150C (pdk13) and PFS154 (pdk14), run in spdk on tiny random FC
models and compared with the host C engine (logits and classes); a changed weight is caught; the size gate's
table on a model too big for the chip."""
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from contract.chips import CHIPS, PADAUK_NAMES
from contract.formats import FORMATS
from contract.model import PackedModel, from_export
from contract.spec import ModelSpec
from engine.build import build_library, load_library, run_c
from engine.header import render_header
from mcu.padauk import header, sim, tools
from tests.strategies import random_model

SRC = Path(sim.SRC)
# the smallest FC models the spec allows (two hidden layers) with 10 classes: they fit the PMS150C's 64 B
TINY = ModelSpec(kind="fc", image_size=8, widths=(4, 4), formats=("2bitsym",))
N_IMAGES = 3


def model_of(spec: ModelSpec, seed: int = 1) -> PackedModel:
    return from_export(random_model(spec, seed).export_model())


def images(n: int = N_IMAGES, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8), dtype=np.uint8)


def c_engine(model: PackedModel, px: np.ndarray, tmp_path: Path, trace: bool = False) -> dict:
    return run_c(load_library(build_library(render_header(model), tmp_path / "lib")), px, trace=trace)


# ---- without the tools -----------------------------------------------------------------------------------------

def test_chip_rows_and_format_ids():
    assert PADAUK_NAMES == ("pms150c", "pfs154")
    assert (CHIPS["pms150c"].rom_words, CHIPS["pms150c"].ram, CHIPS["pms150c"].march) == (1024, 64, ("-mpdk13",))
    assert (CHIPS["pfs154"].rom_words, CHIPS["pfs154"].ram, CHIPS["pfs154"].march) == (2048, 128, ("-mpdk14",))
    ids = {m[1].lower(): int(m[2]) for m in re.finditer(r"#define BMP_FMT_(\w+) (\d+)", (SRC / "bm_pdk.h").read_text())}
    assert ids == {f: FORMATS[f].id for f in header.FORMATS_PDK}


def test_header_rows_drop_the_word_padding():
    m = model_of(TINY)
    lay = header.pdk_layout(m)
    # the logits (10 x int16) and fc1's outputs in region A, fc2's in region B
    assert lay.row_bytes == (16, 1, 1) and lay.acc_bits == 16 and (lay.region_a, lay.region_b, lay.outs) == (20, 4, (0, 20))
    w = m.layers[0].words.reshape(4, -1)
    assert header.row_data(m.layers[0].words, 4, 16).tobytes() == w.astype("<u4").tobytes()
    assert header.render(m, images()) == header.render(m, images())
    with pytest.raises(ValueError, match="does not run format 4bit"):
        header.check(model_of(replace(TINY, formats=("4bit",))))


def test_regions_alternate_back_from_the_logits():
    lay = header.pdk_layout(model_of(replace(TINY, widths=(24, 16, 12))))
    # fc3 (12) and fc1 (24) write B, fc2 (16) writes A with the logits: no layer writes what it reads
    assert (lay.region_a, lay.region_b, lay.outs) == (20, 24, (20, 0, 20))


def test_row_bound_is_the_largest_partial_sum_over_every_input():
    rng = np.random.default_rng(3)
    for lo, hi in ((-16, 111), (0, 127)):
        codes = rng.choice([-15, -3, -1, 1, 5, 15], size=(3, 7))
        shifts = rng.integers(0, 3, 3)
        xs = np.array([[lo if b else hi for b in map(int, f"{m:07b}")] for m in range(2**7)])   # every corner
        partial = np.cumsum(xs[:, None, :] * codes[None], axis=2) << shifts[None, :, None]
        # the extreme partial sums lie at corners of the input box: the bound is reached, never exceeded
        assert header.row_bound(codes, lo, hi, shifts) == np.abs(partial).max()


def test_trained_like_weights_keep_int16_where_the_worst_case_needs_int32():
    m = model_of(replace(TINY, formats=("4bitsym",)))
    lay = m.layers[0]
    small = replace(lay, words=np.zeros_like(lay.words))          # every code +1 (field 0): 64 * 111 < 2^15
    m16 = replace(m, layers=[small, *m.layers[1:]])
    assert lay.bound > header.INT16_MAX and header.model_bound(m16) <= header.INT16_MAX
    assert header.pdk_layout(m16).acc_bits == 16


def test_find_spdk_honours_the_environment(tmp_path, monkeypatch):
    fake = tmp_path / "spdk"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("BITMCU_SPDK", str(fake))
    assert tools.find_spdk() == fake
    monkeypatch.setenv("BITMCU_SPDK_HOME", str(tmp_path / "home"))
    assert str(tmp_path / "home") in tools.manual_steps()


# ---- the SDCC build ----------------------------------------------------------------------------------------------

@pytest.mark.sdcc
@pytest.mark.parametrize("target", PADAUK_NAMES)
def test_build_fits_without_a_multiply(target, tmp_path):
    b = sim.build(model_of(TINY), images(), target, tmp_path)
    assert b.linked and b.ihx.is_file()
    assert not [s for s in b.symbols if re.search(r"mul|div", s)], "the engine must not call a multiply or divide"
    rows = b.size_report()
    rom = [r for r in rows if r[0] == "ROM words"]
    assert sum(r[2] for r in rom[:-1]) == rom[-1][2] <= CHIPS[target].rom_words
    assert rom[0][2] == 4 * 16 + 4 * 1 + 10 * 1       # a weight byte a word, padding dropped


@pytest.mark.sdcc
def test_size_gate_fails_with_a_table(tmp_path):
    big = model_of(replace(TINY, widths=(48, 32), formats=("binary",)))
    with pytest.raises(sim.PadaukSizeError) as e:
        sim.build(big, images(4), "pms150c", tmp_path)
    msg = str(e.value)
    assert "does not fit (ROM words" in msg and "RAM bytes" in msg and "or the pfs154 (mcu.target)" in msg
    weights = 48 * 8 + 32 * 6 + 10 * 4
    assert re.search(rf"weights \(a byte a word\) +{weights}\b", msg)
    assert re.search(r"ROM words +total +(\d+) +1024", msg) and re.search(r"RAM bytes +total +(\d+) +64", msg)


# ---- in the simulator ----------------------------------------------------------------------------------------

CASES = [("pms150c", "2bitsym", "per_tensor", (4, 4)), ("pms150c", "binary", "per_tensor", (4, 4)),
         ("pms150c", "ternary", "per_tensor", (4, 4)), ("pfs154", "2bitsym", "per_tensor", (4, 4)),
         ("pfs154", "4bitsym", "per_tensor", (8, 6)),
         ("pfs154", "2bitsym", "per_tensor", (8, 6, 5)),   # three hidden layers: region A, B, A, then the logits
         ("pfs154", "binary", "per_output", (8, 8))]       # per_output: shifts k[o] and the int32 accumulator


@pytest.mark.sdcc
@pytest.mark.spdk
@pytest.mark.parametrize("target, fmt, scaling, widths", CASES)
def test_simulator_equals_the_c_engine(target, fmt, scaling, widths, tmp_path):
    spec = replace(TINY, formats=(fmt,), scaling=scaling, widths=widths)
    m, px = model_of(spec), images()
    b = sim.build(m, px, target, tmp_path / "pdk")
    r = sim.run(b)
    want = c_engine(m, px, tmp_path)
    np.testing.assert_array_equal(r.logits, want["logits"])
    np.testing.assert_array_equal(r.preds, want["preds"])
    assert r.ticks.shape == (N_IMAGES,) and (r.ticks > 1000).all() and r.startup_ticks > 0
    assert 0 < r.stack_bytes <= sim.STACK_RESERVE and r.ram_used <= CHIPS[target].ram


@pytest.mark.sdcc
@pytest.mark.spdk
def test_a_changed_weight_is_caught(tmp_path):
    m, px = model_of(TINY), images()
    # flip the sign bit of the classifier's weight on the hidden unit that is largest for image 0: logit 0 moves
    hidden = c_engine(m, px, tmp_path / "trace", trace=True)["acts"][-2][1]
    j = int(np.argmax(hidden[0]))
    assert hidden[0, j] > 0
    last = m.layers[-1]
    words = last.words.copy()
    words[0] ^= np.uint32(2 << (2 * j))                  # 2bitsym: bit 1 of field j is the sign
    flipped = replace(m, layers=[*m.layers[:-1], replace(last, words=words)])
    got = sim.run(sim.build(flipped, px, "pms150c", tmp_path / "pdk"))
    want = c_engine(m, px, tmp_path / "c")
    assert (got.logits[:, 0] != want["logits"][:, 0]).any()
    np.testing.assert_array_equal(got.logits[:, 1:], want["logits"][:, 1:])
    np.testing.assert_array_equal(got.logits, c_engine(flipped, px, tmp_path / "c2")["logits"])
