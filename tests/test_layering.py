"""The top-level packages import one way only: contract <- refimpl <- engine <- mcu <- pipeline.

Every import is read from the source (function-level ones too), so a lazy import cannot hide a cycle.
"""
import ast
import subprocess
import sys

import pytest

from .conftest import ROOT

LAYERS = ("contract", "refimpl", "engine", "mcu", "pipeline")   # each may import only those before it
TORCH_FREE = ("contract", "pipeline.stages", "pipeline.graph", "pipeline.config")


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


@pytest.mark.parametrize("package", LAYERS)
def test_package_imports_only_lower_layers(package):
    allowed = set(LAYERS[:LAYERS.index(package) + 1])
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in _imports(path):
            top = name.split(".")[0]
            if top in LAYERS and top not in allowed:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, f"{package} may import only {sorted(allowed)}:\n" + "\n".join(bad)


def test_contract_imports_nothing_heavier_than_numpy():
    third_party = {n.split(".")[0] for p in (ROOT / "contract").rglob("*.py") for n in _imports(p)}
    assert third_party - set(sys.stdlib_module_names) - {"contract", "numpy"} == set()


def test_declarations_and_config_load_without_torch():
    code = ("import sys; " + "; ".join(f"import {m}" for m in TORCH_FREE) +
            "; from pipeline.graph import STAGES; print('torch' in sys.modules, len(STAGES))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "8"]
