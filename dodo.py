"""bitmcu task graph. Usage: doit [cfg=configs/NAME.yaml] [forget=STAGE] <tasks>; `doit list` shows them.

The store lives in artifacts/ (or $BITMCU_ARTIFACTS, e.g. shared storage for a cluster).

Every stage is built into the content-addressed store (pipeline/store.py) under a key derived from its
code, its declared config keys and its inputs' keys, so it runs only when one of those changed.
"""
import os
import sys
from pathlib import Path

from doit import get_var

from pipeline import config
from pipeline.graph import STAGES, Plan
from pipeline.store import Store

ARTIFACTS = Path(os.environ.get("BITMCU_ARTIFACTS", "artifacts"))
ARTIFACTS.mkdir(parents=True, exist_ok=True)  # doit opens its db there before any task runs

DOIT_CONFIG = {
    "default_tasks": [STAGES[-1].name],
    "verbosity": 2,
    "dep_file": str(ARTIFACTS / ".doit.db"),
    "backend": "sqlite3",
}

try:
    PLAN = Plan.make(config.load(get_var("cfg", "configs/default.yaml")), Store(ARTIFACTS))
except config.UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)

for _name in filter(None, get_var("forget", "").split(",")):
    if _name not in PLAN.keys:
        print(f"error: forget={_name}: no such stage (allowed: {', '.join(PLAN.keys)})", file=sys.stderr)
        sys.exit(2)
    PLAN.store.remove(_name, PLAN.keys[_name])


def task_data():
    return PLAN.task("data")


def task_train():
    return PLAN.task("train")


def task_export():
    return PLAN.task("export")


def task_library():
    return PLAN.task("library")


def task_verify():
    return PLAN.task("verify")


def task_gc():
    """Remove store entries that no run links to (and leftovers of interrupted builds)."""
    def gc():
        removed = PLAN.store.gc()
        print(f"removed {len(removed)} entries" + "".join(f"\n  {p}" for p in removed))
    return {"actions": [gc], "uptodate": [False], "verbosity": 2}
