"""The command line as a user meets it: doit over the real graph, with a private store."""
import os
import subprocess
import sys

import pytest

from pipeline.graph import STAGES
from pipeline.stages.data import TEST_LABELS

from .conftest import ROOT


def doit(store, *args):
    env = {**os.environ, "BITMCU_ARTIFACTS": str(store)}
    r = subprocess.run([sys.executable, "-m", "doit", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    return r


def _data_built(tmp_path):
    """A config `c` of 8x8 images and a store under tmp_path in which its data stage is built."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  image_size: 8\n")
    store = tmp_path / "artifacts"
    assert doit(store, f"cfg={cfg}", "data").returncode == 0
    return cfg, store


def test_list_shows_every_stage_with_its_doc(tmp_path):
    out = doit(tmp_path, "list").stdout
    for s in STAGES:
        assert f"{s.name} " in out and s.doc.split("\n")[0][:40] in out


@pytest.mark.mnist
def test_data_twice_then_switch_and_back(tmp_path):
    cfg_a, cfg_b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    cfg_a.write_text("data:\n  image_size: 16\n")
    cfg_b.write_text("data:\n  image_size: 8\n")
    store = tmp_path / "artifacts"
    first = doit(store, f"cfg={cfg_a}", "data")
    assert first.returncode == 0 and "[data] stored" in first.stdout
    again = doit(store, f"cfg={cfg_a}", "data")
    assert again.returncode == 0 and "[data] stored" not in again.stdout and "-- data" in again.stdout
    assert "[data] stored" in doit(store, f"cfg={cfg_b}", "data").stdout
    back = doit(store, f"cfg={cfg_a}", "data")
    assert back.returncode == 0 and "[data] stored" not in back.stdout
    assert (store / "runs" / "a" / "data" / "summary.json").is_file()
    assert (store / "runs" / "b" / "data" / "summary.json").is_file()


@pytest.mark.mnist
def test_damage_is_reported_and_redo_rebuilds(tmp_path):
    cfg, store = _data_built(tmp_path)
    damaged = (store / "runs" / "c" / "data" / TEST_LABELS).resolve()
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\x09")
    r = doit(store, f"cfg={cfg}", "data")
    assert r.returncode != 0
    assert f"{damaged}: content does not match its manifest" in r.stderr
    assert "redo=data" in r.stderr
    fixed = doit(store, f"cfg={cfg}", "redo=data", "data")
    assert fixed.returncode == 0 and "[data] stored" in fixed.stdout


@pytest.mark.mnist
def test_gc_keeps_linked_entries(tmp_path):
    cfg, store = _data_built(tmp_path)
    orphan = store / "store" / "data" / ("0" * 24)
    orphan.mkdir()
    r = doit(store, f"cfg={cfg}", "gc")
    assert r.returncode == 0 and "removed 1 entries" in r.stdout and not orphan.exists()
    assert doit(store, f"cfg={cfg}", "data").stdout.count("[data] stored") == 0


def test_unknown_redo_stage(tmp_path):
    r = doit(tmp_path, "redo=dta", "list")
    assert r.returncode == 2 and "redo=dta: no such stage (allowed: " in r.stderr


@pytest.mark.mnist
def test_redo_names_are_all_checked_before_anything_is_removed(tmp_path):
    cfg, store = _data_built(tmp_path)
    entries = sorted((store / "store" / "data").iterdir())
    r = doit(store, f"cfg={cfg}", "redo=data,nosuch", "data")
    assert r.returncode == 2 and "redo=nosuch: no such stage" in r.stderr
    assert sorted((store / "store" / "data").iterdir()) == entries      # the valid name removed nothing
    assert doit(store, f"cfg={cfg}", "redo=data", "list").returncode == 0
    assert sorted((store / "store" / "data").iterdir()) == entries      # only the stage's own task removes


def test_unknown_variable_names_the_closest_one(tmp_path):
    r = doit(tmp_path, "cgf=configs/tiny.yaml", "list")
    assert r.returncode == 2 and "cgf=configs/tiny.yaml: unknown variable (did you mean cfg=?)" in r.stderr
    r = doit(tmp_path, "forget=data", "list")
    assert r.returncode == 2 and "forget=data: unknown variable" in r.stderr


def test_float_weights_are_refused_before_training_when_export_is_asked_for(tmp_path):
    cfg = tmp_path / "float.yaml"
    cfg.write_text((ROOT / "configs" / "tiny.yaml").read_text().replace("formats: 4bitsym", "formats: none"))
    for tasks in (["verify"], [], ["export"], ["report", "train"]):
        r = doit(tmp_path, f"cfg={cfg}", *tasks)
        assert r.returncode == 2 and "quant.formats: none (float weights) has no integer form" in r.stderr, tasks
        assert "[train]" not in r.stdout
    assert doit(tmp_path, f"cfg={cfg}", "list").returncode == 0


def test_flash_of_a_sweep_is_refused_before_anything_runs(tmp_path):
    r = doit(tmp_path, f"cfg={ROOT / 'configs' / 'sweep_small.yaml'}", "flash")
    assert r.returncode == 2 and "is a sweep; flash, monitor and demo take one config" in r.stderr
    assert not (tmp_path / "store").exists()


CLI_ERRORS = {   # file content (None: no file) and arguments -> what the one-line message says
    "missing file": (None, ["list"], "config file not found"),
    "invalid YAML": ("data: [1,\n", ["list"], "not valid YAML"),
    "not UTF-8": (b"# \xff\n", ["list"], "is not UTF-8 text"),
    "empty": ("", ["list"], "the file is empty"),
    "unknown key": ("data: {size: 8}\n", ["list"], "data.size: unknown key (did you mean data.image_size?)"),
    "bad value": ("train: {lr: 5e-3}\n", ["list"], "train.lr: must be a number; got the string '5e-3'"),
    "bad sweep base": ("sweep: {base: nosuch.yaml, grid: {train.seed: [0]}}\n", ["list"], "sweep.base: nosuch.yaml"),
    "unknown variable": ("data: {image_size: 8}\n", ["list", "foo=bar"], "foo=bar: unknown variable"),
    "unknown redo stage": ("data: {image_size: 8}\n", ["redo=trian", "data"], "redo=trian: no such stage"),
}


@pytest.mark.parametrize("case", sorted(CLI_ERRORS))
def test_command_line_errors_are_one_message_and_exit_2(tmp_path, case):
    content, args, message = CLI_ERRORS[case]
    cfg = tmp_path / "c.yaml"
    if isinstance(content, bytes):
        cfg.write_bytes(content)
    elif content is not None:
        cfg.write_text(content)
    r = doit(tmp_path / "store", f"cfg={cfg}", *args)       # doit() asserts there is no traceback
    assert r.returncode == 2 and r.stderr.startswith("error: ") and message in r.stderr, r.stderr
