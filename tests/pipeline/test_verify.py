"""Export and verify stages: deterministic export, the target's multiplier rule, and a verifier that can fail."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

from engine.build import build_library, load_library, run_c
from engine.header import render_header
from contract.model import FORMAT_VERSION
from pipeline import export, verify
from pipeline.stages import export as export_stage
from pipeline.stages.data import mnist_test
from pipeline.stages.train import trained_model
from refimpl import kernels as K
from refimpl import model as refmodel

from tests.conftest import ROOT, entry

pytestmark = pytest.mark.mnist


@pytest.fixture(scope="module")
def tiny_store(tiny_pipeline):
    """The tiny config's plan, built up to the verify stage."""
    return tiny_pipeline("verify")


def test_tiny_pipeline_verifies_every_layer(tiny_store):
    summary = json.loads((entry(tiny_store, "verify") / "summary.json").read_text())
    assert summary["images"] == 10000
    assert summary["mismatches"] == {"torch_vs_numba": 0, "torch_vs_c": 0}
    acc = summary["accuracy"]
    assert acc["torch"] == acc["numba"] == acc["c"] > 0.3
    assert summary["layers_compared"][0] == "input" and len(summary["layers_compared"]) == 4


def test_export_is_deterministic_and_self_describing(tiny_store, tmp_path):
    outs = []
    for i in range(2):
        out = tmp_path / str(i)
        out.mkdir()
        ctx = SimpleNamespace(cfg={"mcu.target": "ch32v003"}, out=out,
                              input=lambda name: entry(tiny_store, name))
        export.run(ctx)
        outs.append({p.name: p.read_bytes() for p in out.iterdir()})
    assert outs[0] == outs[1]
    assert b"/tmp" not in outs[0]["model.h"] and str(ROOT).encode() not in outs[0]["model.json"]
    model = json.loads(outs[0]["model.json"])
    assert model["format_version"] == FORMAT_VERSION and model["sizes"]["ram_bytes"] > 0
    assert outs[0]["model.h"] == (entry(tiny_store, "export") / "model.h").read_bytes()


def _engines(tiny_store):
    pixels = mnist_test(entry(tiny_store, "data"))[0][:300]
    model = trained_model(entry(tiny_store, "train"))
    packed = export_stage.model(entry(tiny_store, "export"))
    return pixels, verify.torch_int(model, pixels), packed


def test_verifier_catches_one_corrupted_weight(tiny_store, tmp_path):
    pixels, ref, packed = _engines(tiny_store)
    # Flip the sign of fc2's weight on fc1's most active unit (4bitsym: 8 fields a word, bit 3 = sign),
    # so the corruption reaches the outputs rather than hiding behind a dead unit.
    j = int(dict(ref["acts"])["fc1"].mean(0).argmax())
    words = packed.layers[1].words = packed.layers[1].words.copy()
    words[j // 8] ^= np.uint32(1 << (4 * (j % 8) + 3))
    lib = load_library(build_library(render_header(packed), tmp_path))
    count, lines = verify.compare(ref, run_c(lib, pixels), "torch", "c")
    assert count > 0
    assert lines[0].startswith("image ") and ", layer fc2, index (" in lines[0] and "torch " in lines[0]


def test_verifier_catches_flipped_rounding(tiny_store, monkeypatch):
    pixels, ref, packed = _engines(tiny_store)
    real = K.shiftnorm

    def round_half_down(y, out, s_out):
        real(y, out, s_out)
        half = (np.left_shift(1, s_out) >> 1)[:, None]
        tie = (s_out[:, None] > 0) & ((y & ((1 << s_out[:, None]) - 1)) == half) & (out < 127)
        out[tie] -= 1  # ties now round down: what a half-down engine would produce
    monkeypatch.setattr(K, "shiftnorm", round_half_down)
    count, lines = verify.compare(ref, refmodel.run(packed, pixels), "torch", "numba")
    assert count > 0 and "layer fc" in lines[0]


def test_cnn_export_carries_the_streaming_start(tiny_pipeline):
    from pipeline import config
    from pipeline.stages.data import mnist_train
    from refimpl import stream
    from tests.conftest import TINY
    cfg = config.load(TINY).replace(**{"data.image_size": 16, "model.kind": "cnn", "model.cnn_channels": 3,
                                       "model.widths": [8]})
    plan = tiny_pipeline("export", cfg)
    packed = export_stage.model(entry(plan, "export"))
    start = packed.stream_start
    assert len(start) == 2 + 3 and sorted(start[2:]) == [0, 1, 2]   # 3 conv layers: 2 guessed shifts, 3 channels
    packed.stream_start = []
    assert stream.start_state(packed, mnist_train(entry(plan, "data"))[0][:export.START_IMAGES]) == start
    assert f"bm_start[5] = {{{', '.join(map(str, start))}}};" in export_stage.header(entry(plan, "export"))


@pytest.mark.riscv
def test_a_cnn_with_a_mixing_conv_runs_on_the_chip(tiny_pipeline):
    """model.mix through every stage to the CH32V002's emulated firmware: the three host engines agree on every
    layer, the export streams its first run from a start state, and the firmware's predictions and logits
    equal the C engine's (the emulate stage fails otherwise)."""
    from pipeline import config
    from tests.conftest import TINY
    cfg = config.load(TINY).replace(**{
        "data.image_size": 16, "model.kind": "cnn", "model.cnn_channels": 4, "model.mix": True, "model.widths": [8],
        "quant.formats": ["fp130", "fp130", "4bitsym", "fp130", "4bitsym", "4bitsym"], "quant.scaling": "per_output",
        "mcu.target": "ch32v002"})
    tiny_pipeline("verify", cfg)
    plan = tiny_pipeline("emulate", cfg)
    verify_summary = json.loads((entry(plan, "verify") / "summary.json").read_text())
    assert verify_summary["mismatches"] == {"torch_vs_numba": 0, "torch_vs_c": 0}
    assert verify_summary["layers_compared"][:5] == ["input", "conv1", "dw1", "pw1", "dw2"]
    packed = export_stage.model(entry(plan, "export"))
    assert [lay.kind for lay in packed.layers[:4]] == ["conv", "dwconv", "pwconv", "dwconv"]
    start = packed.stream_start
    assert len(start) == 1 + 4 and sorted(start[1:]) == [0, 1, 2, 3]   # conv1 and dw1: one guess, 4 channels
    emulated = json.loads((entry(plan, "emulate") / "summary.json").read_text())
    assert emulated["images"] >= 1
