"""Library stage: compile the C engine with the exported model header into a host shared library (cffi)."""
from __future__ import annotations

from engine.build import build_library, model_info, load_library


def run(ctx) -> dict:
    header = (ctx.input("export") / "model.h").read_text()
    so = build_library(header, ctx.out)
    info = model_info(load_library(so))
    return {"library": str(so.relative_to(ctx.out.resolve())), "ram_bytes": info["ram_bytes"],
            "flash_bytes": info["flash_bytes"], "layers": len(info["layers"])}
