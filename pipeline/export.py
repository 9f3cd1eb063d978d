"""Export stage: trained model -> the integer model every engine runs (engine/CONTRACT.md).

`model.json` (contract/model.py) is the single source: layer list, formats, shapes, packed weight
words, per-output shifts, buffer sizes and a CNN's streaming start (the shifts and first channels each run
starts from, taken from training images: refimpl/stream.py start_state). `model.h` (the C engine's model) is generated from it.
Both are deterministic: the same trained model gives byte-identical files (no timestamps, no paths).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from contract import model as packed
from contract.chips import CHIPS
from contract.formats import FORMATS
from contract.layout import layout
from engine.header import render_header
from pipeline.stages import export as stage
from pipeline.stages.data import mnist_train
from pipeline.stages.train import trained_model
from refimpl.stream import start_state

START_IMAGES = 20000  # training images the streaming start is taken from: its channel order needs the rare slow ones


def packed_model(train_dir: Path, data_dir: Path, target: str) -> packed.PackedModel:
    """The packed model of a trained model for the target chip (the config check has proven that the chip
    runs its formats), with a CNN's streaming start from the first training images."""
    model = packed.from_export(trained_model(train_dir).export_model())
    model.target = target
    model.stream_start = start_state(model, mnist_train(data_dir)[0][:START_IMAGES])
    model.sizes = layout(model)
    return model


def layer_table(model: packed.PackedModel) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows = []
    for lay in model.layers:
        shifts = lay.n_out if lay.out_shifts.any() else 0
        rows.append(dict(layer=lay.name, kind=lay.kind, format=lay.format, weights=lay.n_out * lay.n_in,
                         bits_per_weight=FORMATS[lay.format].bits, flash_bytes=4 * lay.words.size + shifts,
                         activation_bytes=int(np.prod(lay.out_shape))))
    chip = CHIPS[model.target]
    totals = dict(weights=sum(r["weights"] for r in rows), flash_bytes=model.sizes["flash_bytes"],
                  peak_ram_bytes=model.sizes["ram_bytes"], target=chip.name,
                  # padauk: a constant byte costs a ROM word, so the words are the model bytes the ROM holds
                  target_flash_bytes=chip.flash if chip.family == "riscv" else chip.rom_words,
                  target_ram_bytes=chip.ram)
    return rows, totals


def format_table(rows: list[dict[str, Any]], totals: dict[str, Any]) -> str:
    head = f"{'layer':<6} {'kind':<6} {'format':<14} {'weights':>8} {'bits/w':>6} {'flash B':>8} {'act B':>7}"
    lines = [head, "-" * len(head)]
    lines += [f"{r['layer']:<6} {r['kind']:<6} {r['format']:<14} {r['weights']:>8} {r['bits_per_weight']:>6g} "
              f"{r['flash_bytes']:>8} {r['activation_bytes']:>7}" for r in rows]
    lines.append(f"total: {totals['weights']} weights, model flash {totals['flash_bytes']} B "
                 f"(weights, shifts, layer table, streaming start) of {totals['target_flash_bytes']}; engine buffers "
                 f"{totals['peak_ram_bytes']} B RAM of {totals['target_ram_bytes']} on {totals['target']}")
    return "\n".join(lines)


def run(ctx) -> dict:
    model = packed_model(ctx.input("train"), ctx.input("data"), ctx.cfg["mcu.target"])
    packed.save(model, ctx.out / stage.MODEL)
    (ctx.out / stage.HEADER).write_text(render_header(stage.model(ctx.out)))
    rows, totals = layer_table(model)
    table = format_table(rows, totals)
    (ctx.out / stage.TABLE).write_text(table + "\n")
    print(table, flush=True)
    return {"layers": rows, **totals}
