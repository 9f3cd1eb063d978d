"""Import of BitNetMCU checkpoints: layouts, inferred configs, exact codes, clean errors, one full run.

The state_dicts are built here in BitNetMCU's layout (its models.py layer names, a float `weight` and
a clipping scalar `s` per layer). Expected codes follow BitNetMCU's published formulas, written out
below in numpy: weight_quant (scale per QuantType), the exporter's encoding, and what its C engine
decodes each field to.
"""
import datetime
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from pipeline import config
from pipeline.bitnetmcu import CheckpointError, read_checkpoint, to_qmodel, write_config
from contract.spec import model_spec

from tests.conftest import ROOT

TYPES = ("Binary", "Ternary", "2bitsym", "4bit", "4bitsym", "8bit", "FP130", "NF4")
OURS = {"Binary": "binarybalanced", "Ternary": "ternary", "2bitsym": "2bitsym", "4bit": "4bit",
        "4bitsym": "4bitsym", "8bit": "8bit", "FP130": "fp130", "NF4": "nf4"}
NF4 = np.array([-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0,
                0.0796, 0.1609, 0.2461, 0.3379, 0.4407, 0.5626, 0.723, 1.0], dtype=np.float32)
SCALE_NUM = {"2bitsym": 2.0, "4bit": 8.0, "4bitsym": 8.0, "8bit": 128.0, "FP130": 128.0, "NF4": 1.0}


# ---- BitNetMCU's formulas, independently in numpy -----------------------------------------------
def bitnet_values(qt: str, w: np.ndarray, s: float) -> np.ndarray:
    """What BitNetMCU's C engine multiplies by for each weight (NF4: our table value of its index)."""
    w = w.astype(np.float32)
    if qt == "Binary":                         # u = sign(w - mean); exporter: u == -1 -> bit 0, else 1
        u = np.sign(w.astype(np.float64) - w.astype(np.float64).mean())
        return np.where(u == -1, -1, 1)
    if qt == "Ternary":
        scale = np.float32(1.0) / np.float32(max(np.abs(w.astype(np.float64)).mean(), 1e-5))
        return np.clip(np.round(w * scale), -1, 1).astype(np.int64)
    scale = np.float32(SCALE_NUM[qt]) / np.float32(s)
    t = w * scale
    if qt in ("2bitsym", "4bitsym"):
        lo = -2 if qt == "2bitsym" else -8
        u = np.clip(np.round(t - np.float32(0.5)), lo, -lo - 1) + np.float32(0.5)
        sign, mag = u < 0, np.floor(np.abs(u)).astype(np.int64)   # exporter: (u<0)<<(b-1) | floor|u|
        return np.where(sign, -1, 1) * (2 * mag + 1)               # C: +-(2m+1)
    if qt == "4bit":
        u = np.clip(np.round(t - np.float32(0.01)), -8, 7) + np.float32(0.01)
        return np.floor(u).astype(np.int64)
    if qt == "8bit":
        return np.clip(np.round(t), -128, 127).astype(np.int64)
    if qt == "FP130":
        e = np.clip(np.floor(np.log2(np.abs(t))), 0, 7).astype(np.int64)
        return np.where(w < 0, -1, 1) * (1 << e)
    idx = np.abs(t[..., None] - NF4).argmin(-1)
    table = np.array([int(np.sign(v) * np.floor(abs(float(v)) * 127 + 0.5)) for v in NF4])
    return table[idx]


# ---- checkpoints in BitNetMCU's layout ----------------------------------------------------------
def _weights(rng, shape, s_scale=1.0):
    w = rng.normal(0, 0.08, size=shape).astype(np.float32)
    return w, float(np.float32(np.abs(w).mean() / 0.25 * s_scale))


def fc_state(widths, n_in=64, seed=0, names=("model.1", "model.3", "model.fc3", "classifier"), ties=None):
    """FCMNIST state_dict; `ties` (a QuantType) puts exact rounding ties into fc1 (s = 1)."""
    rng = np.random.default_rng(seed)
    dims = [n_in, *widths, 10]
    prefixes = list(names[:len(widths)]) + [names[-1]]
    sd = {}
    for i, p in enumerate(prefixes):
        w, s = _weights(rng, (dims[i + 1], dims[i]))
        if i == 0 and ties:
            s = 1.0
            grid = np.arange(-8.5, 8.75, 0.25, dtype=np.float32) / np.float32(SCALE_NUM.get(ties, 1.0))
            grid = grid[grid != 0] if ties == "FP130" else grid
            w.reshape(-1)[:grid.size] = grid
        sd[f"{p}.weight"] = torch.from_numpy(w)
        sd[f"{p}.s"] = torch.tensor(s)
    return sd


def cnn_state(c=4, widths=(8, 6), seed=1):
    rng = np.random.default_rng(seed)
    sd = {}
    for p in ("model.0", "model.2", "model.5"):
        w, s = _weights(rng, (c, 1, 3, 3))
        sd[f"{p}.weight"], sd[f"{p}.s"] = torch.from_numpy(w * 4), torch.tensor(s * 4)
    dims = [4 * c, *widths, 10]
    for i, p in enumerate(["model.9", "model.11", "model.fc3"][:len(widths)] + ["classifier"]):
        w, s = _weights(rng, (dims[i + 1], dims[i]))
        sd[f"{p}.weight"], sd[f"{p}.s"] = torch.from_numpy(w), torch.tensor(s)
    return sd


def save(tmp_path, sd, name="ck_BitMnist_4bitsym_width.pth"):
    p = tmp_path / name
    torch.save(sd, p)
    return p


def our_codes(cfg_path):
    cfg = config.load(cfg_path)
    model = to_qmodel(read_checkpoint(cfg["import.src"]), model_spec(cfg))
    return [lay["codes"] for lay in model.export_model()["layers"]]


def check_codes(cfg_path, sd, prefixes, types):
    codes = our_codes(cfg_path)
    assert len(codes) == len(prefixes)
    for got, p, qt in zip(codes, prefixes, types):
        want = bitnet_values(qt, sd[f"{p}.weight"].numpy(), float(sd[f"{p}.s"]))
        assert np.array_equal(got, want.reshape(got.shape)), f"{p} ({qt})"


# ---- inferred configs and codes -------------------------------------------------------------------
@pytest.mark.parametrize("qt", TYPES)
def test_fc_codes_equal_bitnetmcus(qt, tmp_path):
    sd = fc_state([12, 10], ties=qt)
    cfg_path = write_config(save(tmp_path, sd, "m.pth"), name="m", quant=qt.lower(), folder=tmp_path / "cfg")
    tree = yaml.safe_load(cfg_path.read_text())
    assert tree["data"] == {"image_size": 8}
    assert tree["model"] == {"kind": "fc", "widths": [12, 10], "input_zero": 17}
    assert tree["quant"] == {"formats": [OURS[qt]]}
    assert tree["mcu"]["target"] == ("ch32v002" if qt in ("4bit", "8bit", "NF4") else "ch32v003")
    assert tree["import"]["src"] == str((tmp_path / "m.pth").resolve())
    check_codes(cfg_path, sd, ["model.1", "model.3", "classifier"], [qt] * 3)


def test_ties_round_as_bitnetmcu_does(tmp_path):
    """At w*scale = 1 exactly, BitNetMCU's round(1 - 0.5) = 0 gives 4bitsym value +1 (our own rounding: 3)."""
    sd = fc_state([12, 10], ties="4bitsym")
    cfg_path = write_config(save(tmp_path, sd), name="t", folder=tmp_path)
    grid = sd["model.1.weight"].numpy().reshape(-1)
    fc1 = our_codes(cfg_path)[0].reshape(-1)
    assert fc1[np.flatnonzero(grid == np.float32(1 / 8))[0]] == 1
    assert fc1[np.flatnonzero(grid == np.float32(3 / 8))[0]] == 5   # round(2.5) = 2 -> u 2.5 -> 5


def test_three_hidden_layers_and_the_2024_names(tmp_path):
    sd = fc_state([16, 12, 10], seed=3)
    cfg_path = write_config(save(tmp_path, sd), name="a", folder=tmp_path, widths="16,12,10")
    assert yaml.safe_load(cfg_path.read_text())["model"]["widths"] == [16, 12, 10]
    check_codes(cfg_path, sd, ["model.1", "model.3", "model.fc3", "classifier"], ["4bitsym"] * 4)
    old = fc_state([12, 10], seed=4, names=("fc1", "fc2", "fc3", "fcl"))
    cfg_path = write_config(save(tmp_path, old, "old.pth"), name="b", quant="2bitsym", folder=tmp_path)
    check_codes(cfg_path, old, ["fc1", "fc2", "fcl"], ["2bitsym"] * 3)


def test_cnn_layout(tmp_path):
    sd = cnn_state()
    cfg_path = write_config(save(tmp_path, sd, "x_CNNMNIST_Aug_BitMnist_FP130_width8_6_0_epochs1.pth"),
                            folder=tmp_path, cnn_width="4")
    assert cfg_path.name == "x_CNNMNIST_Aug_BitMnist_FP130_width8_6_0_epochs1.yaml"
    tree = yaml.safe_load(cfg_path.read_text())
    assert tree["data"] == {"image_size": 16} and tree["mcu"]["target"] == "ch32v002"
    assert tree["model"] == {"kind": "cnn", "widths": [8, 6], "input_zero": 17, "cnn_channels": 4}
    assert tree["quant"]["formats"] == ["8bit", "8bit", "8bit", "2bitsym", "fp130", "fp130"]
    check_codes(cfg_path, sd, ["model.0", "model.2", "model.5", "model.9", "model.11", "classifier"],
                ["8bit", "8bit", "8bit", "2bitsym", "FP130", "FP130"])


# ---- errors --------------------------------------------------------------------------------------
def _fails(tmp_path, src, match, **kw):
    out = tmp_path / "out"
    with pytest.raises(CheckpointError) as e:
        write_config(src, name="x", folder=out, **kw)
    assert not out.exists() or not any(out.iterdir()), "a config was written for a bad file"
    for m in match:
        assert m in str(e.value), str(e.value)


def test_bad_files_name_the_file_and_the_key(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    _fails(tmp_path, text, [str(text), "cannot be read as a state_dict"])
    # a pickled object: torch's advice to drop weights_only is not repeated
    torch.save({"model": datetime.date(2024, 1, 1)}, tmp_path / "pickled.pth")
    _fails(tmp_path, tmp_path / "pickled.pth", ["pickled.pth: cannot be read as a state_dict: it holds Python "
                                                 "objects besides tensors"])
    nan = fc_state([12, 10])
    nan["model.1.weight"][0, 0] = float("nan")
    _fails(tmp_path, save(tmp_path, nan, "nan.pth"), ["nan.pth", "'model.1.weight': holds NaN or infinite values"])
    with pytest.raises(CheckpointError, match="dir=.*notes.pth: is a file, not a folder"):
        write_config(save(tmp_path, fc_state([12, 10]), "ok.pth"), name="ok", quant="4bit", folder=text)
    _fails(tmp_path, tmp_path / "missing.pth", ["missing.pth: no such file"])
    _fails(tmp_path, save(tmp_path, [1, 2], "list.pth"), ["list.pth", "holds a list, not a state_dict"])
    sd = fc_state([12, 10])
    _fails(tmp_path, save(tmp_path, {**sd, "model.7.weight": torch.zeros(3, 3)}, "extra.pth"),
           ["extra.pth", "unknown key 'model.7.weight'"])
    _fails(tmp_path, save(tmp_path, {"encoder.weight": torch.zeros(3, 3)}, "other.pth"),
           ["other.pth", "no BitNetMCU layer layout", "classifier.weight"])
    _fails(tmp_path, save(tmp_path, {**sd, "model.3.weight": torch.zeros(10, 11)}, "shape.pth"),
           ["shape.pth", "'model.3.weight' has shape [10, 11], expected [outputs, 12]"])
    _fails(tmp_path, save(tmp_path, {**sd, "model.1.weight": torch.zeros(12, 50)}, "size.pth"),
           ["'model.1.weight' has shape [12, 50]", "N*N"])
    _fails(tmp_path, save(tmp_path, {**sd, "classifier.s": torch.ones(10)}, "rows.pth"),
           ["'classifier.s' has 10 values", "PerOutput"])
    emnist = fc_state([12, 10])
    emnist["classifier.weight"] = torch.zeros(27, 10)
    _fails(tmp_path, save(tmp_path, emnist, "letters.pth"), ["'classifier.weight'", "10 classes"])
    no_s = {k: v for k, v in sd.items() if not k.endswith(".s")}
    _fails(tmp_path, save(tmp_path, no_s, "old.pth"), ["old.pth: layer model.1 (4bitsym): no clipping scalar s"],
           quant="4bitsym")
    write_config(save(tmp_path, no_s, "old_binary.pth"), name="ok", quant="Binary", folder=tmp_path / "fine")


def test_quant_type_from_name_or_command_line(tmp_path):
    p = save(tmp_path, fc_state([12, 10]), "model.pth")
    _fails(tmp_path, p, ["quant:", "give quant=TYPE (allowed: Binary, Ternary, 2bitsym"])
    _fails(tmp_path, p, ["quant=5bitsym: unknown BitNetMCU QuantType (allowed: Binary"], quant="5bitsym")
    _fails(tmp_path, p, ["widths=12,11: the checkpoint's hidden widths are 12,10"], quant="4bit", widths="12,11")
    _fails(tmp_path, p, ["cnn_width=4: the checkpoint is FCMNIST (no convs)"], quant="4bit", cnn_width="4")


def test_config_that_does_not_fit_the_checkpoint(tmp_path):
    cfg_path = write_config(save(tmp_path, fc_state([12, 10])), name="c", folder=tmp_path)
    cfg = config.load(cfg_path).replace(**{"model.widths": [12, 9]})
    with pytest.raises(CheckpointError, match=r"model.widths \(12, 10\), but the config says \(12, 9\)"):
        to_qmodel(read_checkpoint(cfg["import.src"]), model_spec(cfg))
    cfg = config.load(cfg_path).replace(**{"quant.formats": ["binary"]})
    with pytest.raises(CheckpointError, match="quant.formats: binary has no BitNetMCU QuantType"):
        to_qmodel(read_checkpoint(cfg["import.src"]), model_spec(cfg))


# ---- the command line and a full run ----------------------------------------------------------------
def doit(*args, store):
    env = {**os.environ, "BITMCU_ARTIFACTS": str(store)}
    r = subprocess.run([sys.executable, "-m", "doit", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    return r


def test_doit_import(tmp_path):
    src = save(tmp_path, fc_state([12, 10]), "run_BitMnist_2bitsym_width12_10_0.pth")
    out = tmp_path / "configs"
    r = doit("import", f"src={src}", "name=mine", f"dir={out}", store=tmp_path / "store")
    assert r.returncode == 0, r.stderr
    assert (out / "mine.yaml").is_file() and f"next: doit cfg={out / 'mine.yaml'} verify" in r.stdout
    bad = doit("import", f"src={tmp_path / 'nope.pth'}", f"dir={out}", store=tmp_path / "store")
    assert bad.returncode != 0 and f"{tmp_path / 'nope.pth'}: no such file" in bad.stderr
    assert sorted(p.name for p in out.iterdir()) == ["mine.yaml"]


@pytest.mark.mnist
@pytest.mark.riscv
def test_imported_model_runs_through_verify(tiny_pipeline, tmp_path):
    src = save(tmp_path, fc_state([16, 12, 10], seed=5), "tiny_BitMnist_4bitsym_w.pth")
    cfg = config.load(write_config(src, name="tiny_import", folder=tmp_path))
    plan = tiny_pipeline("report", cfg)
    entry = {s: plan.store.path(s, plan.keys[s]) for s in plan.keys}
    train = json.loads((entry["train"] / "summary.json").read_text())
    verify = json.loads((entry["verify"] / "summary.json").read_text())
    assert verify["mismatches"] == {"torch_vs_numba": 0, "torch_vs_c": 0} and verify["images"] == 10000
    assert train["test_images"] == 10000 and train["epochs"] == 0
    assert verify["accuracy"]["c"] == verify["accuracy"]["torch"] == pytest.approx(train["test_accuracy_int"], abs=1e-6)
    packed = json.loads((entry["export"] / "model.json").read_text())
    assert [lay["format"] for lay in packed["layers"]] == ["4bitsym"] * 4 and packed["input_zero"] == 17
    check_codes(cfg.path, torch.load(src), ["model.1", "model.3", "model.fc3", "classifier"], ["4bitsym"] * 4)
