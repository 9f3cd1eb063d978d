"""The repository passes ruff (configured in pyproject.toml [tool.ruff]; a test dependency)."""
import subprocess
import sys

from .conftest import ROOT


def test_ruff_check_passes():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", str(ROOT)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, f"ruff check found problems (fix them, or run `ruff check --fix`):\n{r.stdout}{r.stderr}"
