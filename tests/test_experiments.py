"""The sweep and search files behind docs/experiments.md stay valid as the schema changes."""
import pytest

from pipeline import search, sweep
from pipeline.graph import STAGES

from .conftest import ROOT

FILES = sorted((ROOT / "configs" / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_experiment_sweep_loads(path, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # `base:` paths are relative to the checkout
    if search.is_search(path):
        assert search.load(path, tmp_path, STAGES).trials > 0
        assert path.stem in (ROOT / "docs" / "experiments.md").read_text()
        return
    assert sweep.is_sweep(path)
    sw = sweep.load(path, tmp_path, tuple(s.name for s in STAGES))
    assert sw.runs and all(c["train.threads"] == 1 for c in sw.runs)
    assert path.stem in (ROOT / "docs" / "experiments.md").read_text()
