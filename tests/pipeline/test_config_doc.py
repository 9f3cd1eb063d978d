"""docs/config.md is generated from the schema and must stay in sync with it."""
import subprocess
import sys

from pipeline import config_doc
from pipeline.config import SCHEMA

from tests.conftest import ROOT

REGENERATE = "regenerate it with `./run python -m pipeline.config_doc` and commit docs/config.md"


def test_committed_config_reference_matches_schema():
    committed = (ROOT / "docs" / "config.md").read_text()
    assert committed == config_doc.render(), f"docs/config.md is out of date with pipeline/config.py: {REGENERATE}"


def test_reference_lists_every_key_once():
    text = config_doc.render()
    for name in SCHEMA:
        section, leaf = name.split(".", 1)
        assert text.count(f"| `{leaf}` |") >= 1, name
    assert text.count("\n## ") == len({n.split(".", 1)[0] for n in SCHEMA})


def test_entry_point_writes_the_file_without_torch(tmp_path):
    out = tmp_path / "config.md"
    code = ("import sys; from pipeline import config_doc; config_doc.main([sys.argv[1]]); "
            "assert 'torch' not in sys.modules, 'config_doc imported torch'")
    subprocess.run([sys.executable, "-c", code, str(out)], cwd=ROOT, check=True, capture_output=True)
    assert out.read_text() == config_doc.render()
