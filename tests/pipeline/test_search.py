"""Searches: the file's schema and its errors, the fit check before training, a tiny search end to end and
again from the store, two workers sharing one SQLite study, and a study in a real PostgreSQL server."""
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from pipeline import config, fit, search
from pipeline.config import ConfigError
from pipeline.graph import STAGES

from tests.conftest import ROOT, postgres_bin
from tests.test_dodo import doit

TINY = ROOT / "configs" / "search_tiny.yaml"


def write(tmp_path, text, name="s.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def tiny_copy(tmp_path, name, **search_changes):
    """configs/search_tiny.yaml under another name (another study), search: keys changed."""
    tree = yaml.safe_load(TINY.read_text())
    tree["search"].update(search_changes)
    return write(tmp_path, yaml.safe_dump(tree), f"{name}.yaml")


GOOD = """
data: {image_size: 12}
mcu: {target: ch32v003}
search:
  trials: 3
  space:
    model.kind: [fc, cnn]
    fc.depth: [2, 3]
    fc.widths: {low: 8, high: 32}
"""


@pytest.mark.parametrize("body, expected", [
    ("search: {space: {train.epochs: [1]}}", "s.yaml: search.trials: missing"),
    ("search: {trials: 0, space: {train.epochs: [1]}}", "s.yaml: search.trials: 0 (allowed: 1 to 100000)"),
    ("search: {trials: 2, sampler: grid, space: {train.epochs: [1]}}", "search.sampler: 'grid' (allowed: tpe, nsga2)"),
    ("search: {trials: 2, sampeler: tpe, space: {train.epochs: [1]}}",
     "search.sampeler: unknown key (did you mean sampler?"),
    ("search: {trials: 2, sampler: nsga2, pruner: median, space: {train.epochs: [1]}}",
     "search.pruner: median: NSGA-II optimises two objectives"),
    ("search: {trials: 2}", "search.space: a mapping of what to search"),
    ("search: {trials: 2, space: {train.epoch: [1]}}", "search.space: train.epoch: cannot be searched (did you mean "
     "train.epochs?"),
    ("search: {trials: 2, space: {train.epochs: [0, 5]}}", "search.space: train.epochs: 0: 0 is out of range"),
    ("search: {trials: 2, space: {train.epochs: []}}", "search.space: train.epochs: an empty list"),
    ("search: {trials: 2, space: {train.epochs: {low: 5}}}", "train.epochs: {'low': 5}: a range needs low and high"),
    ("search: {trials: 2, space: {train.lr: {low: 0.1, high: 0.01}}}", "train.lr: low 0.1 above high 0.01"),
    ("search: {trials: 2, space: {mcu.target: [ch32v002, ch32v006]}}", "mcu.target: cannot be searched (a search "
     "is for one chip"),
    ("search: {trials: 2, space: {model.widths: [16]}}", "model.widths: cannot be searched (give fc.depth"),
    ("search: {trials: 2, space: {fc.depth: [2, 5], fc.widths: [16]}}",
     "fc.depth: 5: not a number of hidden layers of a fc (allowed: 2 to 4)"),
    ("search: {trials: 2, space: {fc.widths: [16]}}", "fc.widths: needs fc.depth too"),
    ("search: {trials: 2, space: {cnn.channels: [16]}}", "cnn.channels: no trial is a cnn (model.kind: fc)"),
    ("mcu: {target: ch32v003}\nsearch: {trials: 2, space: {quant.formats: [4bitsym, 8bit]}}",
     "search.space: quant.formats: 8bit need a multiply instruction, which mcu.target ch32v003 lacks"),
    ("search: {trials: 2, space: {quant.formats: [none]}}", "quant.formats: none (float weights) cannot be deployed"),
    ("mcu: {target: pfs154}\nmodel: {widths: [16, 16]}\nquant: {formats: 2bitsym}\n"
     "search: {trials: 2, space: {train.epochs: [1]}}", "mcu.target: pfs154: a search runs for the RISC-V chips"),
    ("train: {val_images: 0}\nsearch: {trials: 2, space: {train.epochs: [1]}}", "train.val_images: 0, but a search "
     "chooses by the validation accuracy"),
    ("train: {epoch: 3}\nsearch: {trials: 2, space: {train.epochs: [1]}}", "s.yaml: train.epoch: unknown key"),
    ("search: {trials: 2, storage: study.db, space: {train.epochs: [1]}}", "search.storage: 'study.db': not a "
     "database URL"),
])
def test_bad_search_files_name_the_file_and_key(tmp_path, body, expected):
    with pytest.raises(ConfigError) as e:
        search.load(write(tmp_path, body), tmp_path, STAGES)
    assert expected in str(e.value)


@pytest.mark.parametrize("preset", sorted(p.name for p in (ROOT / "configs").glob("search_*.yaml")))
def test_search_presets_load(tmp_path, preset):
    s = search.load(ROOT / "configs" / preset, tmp_path, STAGES)
    assert s.name == preset[:-5] and s.trials >= 1 and s.values["train.val_images"] > 0


def test_a_bad_search_file_is_one_message_and_exit_2(tmp_path):
    r = doit(tmp_path / "store", f"cfg={write(tmp_path, 'search: {trials: 2, space: {train.epochs: [0]}}')}",
             "search")
    assert r.returncode == 2 and "s.yaml: search.space: train.epochs: 0: 0 is out of range" in r.stderr


def test_points_draw_the_architecture_per_kind_and_a_format_per_layer(tmp_path):
    import optuna

    s = search.load(write(tmp_path, GOOD + "    cnn.channels: [8]\n    cnn.depth: [1]\n    cnn.widths: [16]\n"
                          "    quant.formats: [4bitsym, ternary]\n"), tmp_path, STAGES)
    assert s.storage == f"sqlite:///{(tmp_path / 'searches' / 's' / 'study.db').absolute()}"
    assert s.stages == ("data", "train", "export", "library", "verify", "firmware")
    fc = s.point(optuna.trial.FixedTrial({"model.kind": "fc", "fc.depth": 3, "fc.width1": 16, "fc.width2": 9,
                                          "fc.width3": 16, **{f"quant.formats.fc{i}": "ternary" for i in (1, 2, 3, 4)}}))
    assert fc == {"model.kind": "fc", "model.widths": [16, 9, 16], "quant.formats": ["ternary"] * 4}
    cnn = s.point(optuna.trial.FixedTrial({"model.kind": "cnn", "cnn.depth": 1, "cnn.width1": 16, "cnn.channels": 8,
                                           **{f"quant.formats.{n}": "4bitsym" for n in ("conv1", "dw1", "dw2", "fc1",
                                                                                       "fc2")}}))
    assert cnn["model.cnn_channels"] == 8 and len(cnn["quant.formats"]) == 5
    cfg = s.trial_config(7, cnn)           # a complete config on disk, loadable as any preset
    assert config.load(cfg.path).values == cfg.values and Path(cfg.path).name == "trial-0007.yaml"


@pytest.mark.riscv
def test_a_model_that_cannot_fit_is_found_before_training(tmp_path):
    base = config.load(ROOT / "configs" / "tiny.yaml")
    huge = base.replace(**{"data.image_size": 16, "model.widths": [512, 64]})
    assert "the model alone needs" in fit.misfit(huge)                   # layout: no build needed
    # the layout fits 2 KB (1,600 B of accumulators, 400 B of activations), the firmware's RAM does not
    wide = base.replace(**{"model.widths": [400, 10], "quant.formats": ["ternary"]})
    assert fit.model_sizes(wide)["ram_bytes"] <= 2048
    reason = fit.misfit(wide)
    assert "the firmware does not fit (RAM)" in reason and "OVER" in reason
    assert fit.misfit(base) is None


@pytest.mark.riscv
def test_infeasible_trials_are_recorded_with_the_reason_and_train_nothing(tmp_path):
    from pipeline import search_report, search_study
    from pipeline.store import Store

    p = write(tmp_path, """
data: {image_size: 16}
mcu: {target: ch32v003, mode: serial}
search:
  trials: 2
  space:
    fc.depth: [2]
    fc.widths: [512, 1024]
""")
    s = search.load(p, tmp_path, STAGES)
    search_study.run(s, Store(tmp_path))
    rows = search_report.rows(search_study.open_study(s))
    assert [r["state"] for r in rows] == ["infeasible", "infeasible"]
    assert all(r["reason"].startswith("before training: the model alone needs") for r in rows)
    assert not (tmp_path / "store" / "train").exists() and not (tmp_path / "store" / "data").exists()
    search_report.write(s, search_study.open_study(s))
    assert "infeasible: before training" in (s.out / "table.md").read_text() and not (s.out / "best.yaml").exists()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the searches below: a point that two searches draw is built once."""
    return tmp_path_factory.mktemp("search_store")


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.mnist
@pytest.mark.riscv
def test_tiny_search_end_to_end_then_again_for_free(store):
    t0 = time.perf_counter()
    r = doit(store, f"cfg={TINY}", "search")
    first = time.perf_counter() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = store / "searches" / "search_tiny"
    rows = _csv(out / "results.csv")
    assert [int(x["trial"]) for x in rows] == [0, 1, 2, 3]
    assert all(x["state"] in ("complete", "pruned") for x in rows) and any(x["pareto"] == "True" for x in rows)
    done = [x for x in rows if x["state"] == "complete"]
    assert all(0 < float(x["val_accuracy"]) <= 1 and 0 < float(x["test_accuracy"]) <= 1 for x in done)
    assert all(int(x["firmware_flash"]) > int(x["model_flash"]) > 0 for x in done)
    best = max(done, key=lambda x: (float(x["val_accuracy"]), -int(x["model_flash"])))
    chosen = config.load(out / "best.yaml")            # the best trial's config, ready to copy
    assert chosen.values == config.load(best["config"]).values
    assert "| trial | state |" in (out / "table.md").read_text()
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG" and (out / "study.db").is_file()
    for x in rows:                                      # each trial's config reruns by hand, from the store
        assert Path(x["config"]).is_file()

    t0 = time.perf_counter()
    again = doit(store, f"cfg={TINY}", "search")
    assert again.returncode == 0 and "[search] trial" not in again.stdout and "] stored" not in again.stdout
    assert _csv(out / "results.csv") == rows
    print(f"tiny search: {first:.1f} s, again {time.perf_counter() - t0:.1f} s")


@pytest.mark.slow
@pytest.mark.mnist
@pytest.mark.riscv
def test_two_workers_share_one_sqlite_study(store, tmp_path):
    p = tiny_copy(tmp_path, "workers", seed=7)
    env = {**os.environ, "BITMCU_ARTIFACTS": str(store)}
    workers = [subprocess.Popen([sys.executable, "-m", "doit", f"cfg={p}", "search"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(o[-3000:] for o in outs)
    assert all("Traceback" not in o for o in outs)
    ran = [{int(ln.split()[2].rstrip(":")) for ln in o.splitlines()
            if ln.startswith("[search] trial") and (": complete" in ln or ": pruned" in ln)} for o in outs]
    assert not ran[0] & ran[1] and ran[0] | ran[1] == {0, 1, 2, 3}, ran   # each trial once, by one worker
    rows = _csv(store / "searches" / "workers" / "results.csv")
    assert [int(x["trial"]) for x in rows] == [0, 1, 2, 3]


@pytest.fixture
def postgres():
    """A PostgreSQL server of the test's own in a temporary folder, reached by its unix socket; its URL."""
    bin_dir = postgres_bin()      # the test's `postgres` marker skips it where there is none
    folder = Path(tempfile.mkdtemp(prefix="bitmcu-pg-"))
    # the server refuses to run as root: then it runs as Debian's postgres user, in a folder it owns
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(folder, "postgres")
    data, sock = folder / "data", folder
    run = [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "bitmcu", "--auth=trust", "-E", "UTF8"]
    subprocess.run(run, check=True, capture_output=True)
    start = [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
             f"-k {sock} -c listen_addresses=''", "start"]
    subprocess.run(start, check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg2://bitmcu@/postgres?host={sock}"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.mnist
@pytest.mark.riscv
@pytest.mark.postgres
def test_a_study_in_postgresql(store, tmp_path, postgres):
    import optuna

    p = tiny_copy(tmp_path, "pg", trials=3)
    r = doit(store, f"cfg={p}", f"storage={postgres}", "search")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    study = optuna.load_study(study_name="pg", storage=postgres)
    assert len(study.trials) == 3 and not (store / "searches" / "pg" / "study.db").exists()
    assert len(_csv(store / "searches" / "pg" / "results.csv")) == 3
    again = doit(store, f"cfg={p}", f"storage={postgres}", "search")   # a second worker finds the study full
    assert again.returncode == 0 and "[search] trial" not in again.stdout
