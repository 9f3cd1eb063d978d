"""Library stage: compile the C engine with the exported model header into a host shared library (cffi)."""
from __future__ import annotations

from engine.build import build_library, load_library, model_info
from pipeline.stages.export import header as model_header


def run(ctx) -> dict:
    header = model_header(ctx.input("export"))
    so = build_library(header, ctx.out)
    info = model_info(load_library(so))
    return {"library": str(so.relative_to(ctx.out.resolve())), "ram_bytes": info["ram_bytes"],
            "flash_bytes": info["flash_bytes"], "layers": len(info["layers"])}
