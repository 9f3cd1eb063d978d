"""report: one self-contained HTML page of the run; its reader."""
from __future__ import annotations

from pathlib import Path

from pipeline.config import SCHEMA
from pipeline.stage import Stage

PAGE = "report.html"

STAGE = Stage(
    name="report",
    doc="One self-contained HTML page of the run (report.html + PNG figures): curves, errors, codes, memory",
    module="pipeline.report",
    keys=tuple(k for k, v in SCHEMA.items() if not v.runtime),  # the page shows the whole config
    inputs=("data", "train", "export", "verify", "firmware", "emulate"),
    outputs=(PAGE, "*.png"),
)


def page(entry: Path) -> Path:
    return entry / PAGE
