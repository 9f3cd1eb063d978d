"""flake.nix: it parses, and its dev shell carries every dependency pyproject.toml declares."""
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FLAKE = ROOT / "flake.nix"
NIX_NAMES = {"opencv-python-headless": "opencv4", "psycopg2-binary": "psycopg2"}  # PyPI name -> nixpkgs' python attribute, where they differ


def test_flake_parses():
    if shutil.which("nix-instantiate") is None:
        pytest.skip("nix-instantiate not installed (Debian: apt-get install nix-bin; .ci/run installs it)")
    r = subprocess.run(["nix-instantiate", "--parse", str(FLAKE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_flake_lists_every_python_dependency():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = meta["dependencies"] + meta["optional-dependencies"]["test"]
    names = {re.split(r"[<>=!~\[ ]", d, maxsplit=1)[0].lower() for d in deps}
    names = {NIX_NAMES.get(n, n) for n in names}
    shell = FLAKE.read_text()
    listed = set(re.search(r"withPackages \(p: with p; \[(.*?)\]\);", shell, re.S).group(1).split())
    assert names - listed == set()
