"""Export stage: trained model -> the integer model every engine runs (engine/CONTRACT.md).

`model.json` is the single source: layer list, formats, shapes, packed weight words, per-output
shifts and buffer sizes. `model.h` (the C engine's model) is generated from it. Both are
deterministic: the same trained model gives byte-identical files (no timestamps, no paths).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.header import layout, render_header
from pipeline.config import UserError
from pipeline.models import build_model
from pipeline.spec import FORMATS, ModelSpec
from refimpl.model import from_export

FORMAT_VERSION = 1
# The CH32V003 has no multiply instruction; the V002/V006 have Zmmul. RAM is what our code may use.
TARGETS = {"ch32v003": {"multiplier": False, "ram": 2048, "flash": 16384},
           "ch32v002": {"multiplier": True, "ram": 4096, "flash": 16384}}


class ExportError(UserError):
    pass


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


def load_trained(train_dir: Path) -> torch.nn.Module:
    state = torch.load(train_dir / "model.pt", map_location="cpu", weights_only=False)
    model = build_model(ModelSpec.from_dict(state["spec"]))
    model.load_state_dict(state["model"])
    return model.eval()


def packed_model(train_dir: Path, target: str) -> dict[str, Any]:
    """The refimpl/C model dict (numpy arrays) of a trained model, checked against the target."""
    export = load_trained(train_dir).export_model()
    if not TARGETS[target]["multiplier"]:
        bad = [f"{lay['name']} ({lay['format']})" for lay in export["layers"]
               if not FORMATS[lay["format"]].multiplier_free]
        if bad:
            free = ", ".join(n for n, f in FORMATS.items() if f.multiplier_free)
            raise ExportError(f"mcu.target: {target} has no multiply instruction, but layers "
                              f"{', '.join(bad)} need one (allowed formats: {free}; or mcu.target: ch32v002)")
    return from_export(export)


def load_packed(export_dir: Path) -> dict[str, Any]:
    """model.json back into the numpy form refimpl and the header generator take."""
    model = json.loads((export_dir / "model.json").read_text())
    for lay in model["layers"]:
        lay["words"] = np.asarray(lay["words"], dtype=np.uint32)
        lay["out_shifts"] = np.asarray(lay["out_shifts"], dtype=np.int64)
        lay["in_shape"], lay["out_shape"] = tuple(lay["in_shape"]), tuple(lay["out_shape"])
    return model


def layer_table(model: dict[str, Any], target: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows = []
    for lay in model["layers"]:
        n_w = int(lay["n_out"]) * int(lay["n_in"])
        shifts = int(lay["n_out"]) if np.asarray(lay["out_shifts"]).any() else 0
        rows.append(dict(layer=lay["name"], kind=lay["kind"], format=lay["format"], weights=n_w,
                         bits_per_weight=FORMATS[lay["format"]].bits,
                         flash_bytes=4 * int(np.asarray(lay["words"]).size) + shifts,
                         activation_bytes=int(np.prod(lay["out_shape"]))))
    sizes = layout(model)
    totals = dict(weights=sum(r["weights"] for r in rows), flash_bytes=sizes["flash_bytes"],
                  peak_ram_bytes=sizes["ram_bytes"], target=target,
                  target_flash_bytes=TARGETS[target]["flash"], target_ram_bytes=TARGETS[target]["ram"])
    return rows, totals


def format_table(rows: list[dict[str, Any]], totals: dict[str, Any]) -> str:
    head = f"{'layer':<6} {'kind':<6} {'format':<14} {'weights':>8} {'bits/w':>6} {'flash B':>8} {'act B':>7}"
    lines = [head, "-" * len(head)]
    lines += [f"{r['layer']:<6} {r['kind']:<6} {r['format']:<14} {r['weights']:>8} {r['bits_per_weight']:>6g} "
              f"{r['flash_bytes']:>8} {r['activation_bytes']:>7}" for r in rows]
    lines.append(f"total: {totals['weights']} weights, model flash {totals['flash_bytes']} B "
                 f"(weights, shifts, layer table) of {totals['target_flash_bytes']}; engine buffers "
                 f"{totals['peak_ram_bytes']} B RAM of {totals['target_ram_bytes']} on {totals['target']}")
    return "\n".join(lines)


def run(ctx) -> dict:
    target = ctx.cfg["mcu.target"]
    model = packed_model(ctx.input("train"), target)
    model["format_version"] = FORMAT_VERSION
    model["target"] = target
    model["sizes"] = layout(model)
    (ctx.out / "model.json").write_text(json.dumps(_jsonable(model), sort_keys=True, indent=1) + "\n")
    (ctx.out / "model.h").write_text(render_header(load_packed(ctx.out)))
    rows, totals = layer_table(model, target)
    table = format_table(rows, totals)
    (ctx.out / "layers.txt").write_text(table + "\n")
    print(table, flush=True)
    return {"layers": rows, **totals}
