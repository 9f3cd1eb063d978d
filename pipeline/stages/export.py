"""export: the integer model as model.json and the generated C header; readers of its entry."""
from __future__ import annotations

from pathlib import Path

from contract import model as packed
from pipeline.stage import Stage

MODEL, HEADER, TABLE = "model.json", "model.h", "layers.txt"

STAGE = Stage(
    name="export",
    doc="Integer model (packed weights, shifts, buffer sizes) as model.json and a generated C header",
    module="pipeline.export",
    keys=("mcu.target",),
    inputs=("train", "data"),
    outputs=(MODEL, HEADER, TABLE),
)


def model(entry: Path) -> packed.PackedModel:
    return packed.load(entry / MODEL)


def header(entry: Path) -> str:
    """model.h: the model for engine/bitmcu.c."""
    return (entry / HEADER).read_text()
