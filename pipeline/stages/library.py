"""library: the C engine and the exported header as a host shared library (cffi); its reader."""
from __future__ import annotations

from pathlib import Path

from pipeline.stage import Stage, summary

STAGE = Stage(
    name="library",
    doc="Compile the C engine with the exported header into a host shared library (cffi)",
    module="pipeline.library",
    inputs=("export",),
    outputs=("*.so", "_bm_model_*/*"),  # the module, and its build folder (sources, objects)
    extra_sources=("engine/bitmcu.c", "engine/bitmcu.h"),
)


def library(entry: Path) -> Path:
    """The built extension module (load it with engine.build.load_library)."""
    return entry / summary(entry)["library"]
