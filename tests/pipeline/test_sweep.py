"""Sweeps: expansion of a sweep file into run configs, its errors, and a parallel run over a shared store."""
import csv

import pytest

from pipeline import config, sweep
from pipeline.config import ConfigError
from pipeline.graph import STAGES

from tests.conftest import ROOT
from tests.test_dodo import doit

STAGE_NAMES = tuple(s.name for s in STAGES)


def write(tmp_path, text):
    p = tmp_path / "sw.yaml"
    p.write_text(text)
    return p


def test_grid_then_runs_expand_in_order_with_shared_overrides(tmp_path):
    p = write(tmp_path, f"""
train: {{epochs: 3}}
sweep:
  base: {ROOT / 'configs/tiny.yaml'}
  grid:
    quant.formats: [4bitsym, ternary]
    model.widths: [[16, 16], [32, 32]]
  runs:
    - {{quant.formats: fp130, train.epochs: 1}}
""")
    sw = sweep.load(p, tmp_path / "out", STAGE_NAMES)
    assert [c.name for c in sw.runs] == [f"sw-{i:02d}" for i in range(5)]
    assert [(c["quant.formats"], c["model.widths"]) for c in sw.runs[:4]] == [
        (["4bitsym"], [16, 16]), (["4bitsym"], [32, 32]), (["ternary"], [16, 16]), (["ternary"], [32, 32])]
    assert [c["train.epochs"] for c in sw.runs] == [3, 3, 3, 3, 1]
    assert all(c["data.image_size"] == 8 and c["train.threads"] == 1 for c in sw.runs)  # from the base
    for c in sw.runs:  # each run's file is a complete config that loads to the same values
        again = config.load(c.path)
        assert again.values == c.values and again.name == c.name
    assert sw.stage == "verify"


@pytest.mark.parametrize("body, expected", [
    ("sweep: {grid: {quant.format: [4bitsym]}}", "quant.format: unknown key (did you mean quant.formats?)"),
    ("sweep: {grid: {quant.formats: 4bitsym}}", "sweep.grid: must map dotted config keys to non-empty lists"),
    ("sweep: {stage: deploy, grid: {quant.formats: [4bitsym]}}", "sweep.stage: unknown stage 'deploy'"),
    ("sweep: {}", "sweep: has no runs"),
    ("sweep: {grids: {}}", "sweep.grids: unknown key (allowed: base, stage, grid, runs)"),
    ("sweep: {grid: {quant.formats: [bogus]}}", "quant.formats: unknown value 'bogus'"),
    ("sweep: {runs: [{train.epochs: 0}]}", "train.epochs: 0 is out of range"),
])
def test_bad_sweep_files_name_the_problem(tmp_path, body, expected):
    with pytest.raises(ConfigError, match=None) as e:
        sweep.load(write(tmp_path, body), tmp_path / "out", STAGE_NAMES)
    assert expected in str(e.value)


def test_pareto_front():
    rows = [dict(run="a", flash_bytes=100, accuracy=0.90), dict(run="b", flash_bytes=200, accuracy=0.95),
            dict(run="c", flash_bytes=250, accuracy=0.94), dict(run="d", flash_bytes=100, accuracy=0.80),
            dict(run="e", flash_bytes=300, accuracy=0.97)]
    assert sweep.pareto(rows) == {"a", "b", "e"}


def test_not_a_sweep_file(tmp_path):
    r = doit(tmp_path, f"cfg={ROOT / 'configs/tiny.yaml'}", "sweep")
    assert r.returncode != 0 and "is not a sweep file" in r.stderr


@pytest.mark.slow
@pytest.mark.mnist
def test_parallel_sweep_shares_the_store_and_resumes(tmp_path):
    p = write(tmp_path, f"""
train: {{epochs: 1, train_limit: 256}}
sweep:
  base: {ROOT / 'configs/tiny.yaml'}
  grid:
    quant.formats: [4bitsym, 2bitsym]
""")
    store = tmp_path / "artifacts"
    r = doit(store, f"cfg={p}", "-n", "2", "sweep")
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(list((store / "store" / "data").iterdir())) == 1  # same key in both runs: built once
    for run in ("sw-00", "sw-01"):
        assert (store / "runs" / run / "verify" / "summary.json").is_file()
    with open(store / "sweeps" / "sw" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["run"] for r in rows) == ["sw-00", "sw-01"] and all(r["verified"] == "True" for r in rows)
    assert all(r["epoch"] == r["epochs"] == "1" for r in rows)          # train.select last: the only epoch
    assert "| epoch kept |" in (store / "sweeps" / "sw" / "table.md").read_text()
    assert (store / "sweeps" / "sw" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    again = doit(store, f"cfg={p}", "sweep")  # everything is in the store: nothing is rebuilt
    assert again.returncode == 0 and "] stored" not in again.stdout and "sw-01" in again.stdout


def test_module_lists_run_configs_for_other_schedulers(tmp_path):
    import subprocess
    import sys
    p = write(tmp_path, f"sweep: {{base: {ROOT / 'configs/tiny.yaml'}, grid: {{train.seed: [1, 2]}}}}")
    env = {"BITMCU_ARTIFACTS": str(tmp_path / "a"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "pipeline.sweep", str(p)], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    paths = r.stdout.split()
    assert [config.load(x)["train.seed"] for x in paths] == [1, 2]
    bad = subprocess.run([sys.executable, "-m", "pipeline.sweep", str(ROOT / "configs/tiny.yaml")], cwd=ROOT,
                         env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "not a sweep file" in bad.stderr


def test_collect_reads_each_runs_figures_including_cycles(tmp_path):
    import json
    p = write(tmp_path, f"sweep:\n  base: {ROOT / 'configs/tiny.yaml'}\n  grid:\n    train.seed: [0, 1]\n")
    sw = sweep.load(p, tmp_path / "out", STAGE_NAMES)
    figures = {"train": {"test_accuracy_int": 0.5}, "export": {"flash_bytes": 860, "weights": 1440},
               "verify": {"mismatches": {"torch_vs_c": 0}}, "emulate": {"cycles": {"mean": 22331.0}}}
    for stage, fig in figures.items():         # the first run finished everything, the second nothing
        (tmp_path / "runs" / "sw-00" / stage).mkdir(parents=True)
        (tmp_path / "runs" / "sw-00" / stage / "summary.json").write_text(json.dumps(fig))
    rows = sweep.collect(sw, tmp_path)
    assert [(r["run"], r["accuracy"], r["flash_bytes"], r["verified"], r["cycles"]) for r in rows] == [
        ("sw-00", 0.5, 860, True, 22331.0)]


def test_a_bad_base_names_the_key(tmp_path):
    p = write(tmp_path, "sweep:\n  base: configs/nosuch.yaml\n  grid:\n    train.seed: [0, 1]\n")
    with pytest.raises(ConfigError, match=r"sw.yaml: sweep.base: configs/nosuch.yaml: the preset the runs start "
                                          r"from cannot be used:\nconfigs/nosuch.yaml: config file not found"):
        sweep.load(p, tmp_path / "out", STAGE_NAMES)


def test_seed_table_gives_each_seed_then_mean_and_std_per_setting():
    def row(group, seed, acc, val=None):
        return {"group": group, "seed": seed, "accuracy": acc, "val_accuracy": val}
    rows = [row("model.widths=32", 1, 0.980, 0.97), row("model.widths=32", 0, 0.990, 0.99),
            row("model.widths=32", 2, 0.985, 0.98), row("model.widths=64", 0, 0.995), row("", None, 0.5)]
    lines = sweep.seed_table(rows)
    body = [ln for ln in lines if ln.startswith("| model")]
    assert body == ["| model.widths=32 | 0, 1, 2 | 99.00 / 98.00 / 98.50 | 98.50% | 0.50 | 98.00% |"]
    assert sweep.seed_table([row("a", 0, 0.9), row("b", 0, 0.8)]) == []  # one seed each: no table
