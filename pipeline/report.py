"""Report stage: one self-contained HTML page per run (report.html) with its PNG figures beside it.

It reads what the upstream stages stored: training history (train/metrics.json), the exported
integer model (export/model.json, its per-layer table in export/summary.json), verification
(verify/summary.json), the firmware (flash, RAM) and the emulator (instructions, cycles). Test-set
predictions are recomputed from the exported model with the numba engine, which verify proved
identical to the C and PyTorch integer paths, so they are the deployed model's predictions.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

from contract.formats import FORMATS
from contract.model import PackedModel
from contract.packing import unpack
from pipeline import report_figures as figs
from pipeline.config import SCHEMA
from pipeline.report_page import card, esc, figure, fmt_value, page, table
from pipeline.stage import summary as _summary
from pipeline.stages import ORDER, export, train
from pipeline.stages.data import mnist_test
from pipeline.stages.report import PAGE
from refimpl.model import run as run_numba

SHOWN_ERRORS = 48  # misclassified digits drawn
CHIP_STAGES = ("firmware", "emulate")  # inputs whose summary figures the page shows as tables
BATCH = 1000  # images per numba call: bounds the traced activations held at once
TIMES, ARROW = "\u00d7", " \u2192 "


def predictions(model: PackedModel, pixels: np.ndarray) -> np.ndarray:
    """The exported model's predicted class of every image."""
    return np.concatenate([run_numba(model, pixels[i:i + BATCH])["preds"] for i in range(0, len(pixels), BATCH)])


def confusion(labels: np.ndarray, preds: np.ndarray, classes: int) -> np.ndarray:
    """[true, predicted] counts."""
    return np.bincount(labels * classes + preds, minlength=classes * classes).reshape(classes, classes)


def code_usage(model: PackedModel) -> list[dict[str, Any]]:
    """Per weight layer: how often each code of its format occurs in the packed words, and the entropy."""
    out = []
    for lay in model.layers:
        fmt = lay.format
        codes = unpack(lay.words, fmt, lay.n_out, lay.n_in)
        allowed = np.array(FORMATS[fmt].codes)
        counts = (codes.reshape(-1, 1) == allowed).sum(0)
        p = counts[counts > 0] / counts.sum()
        out.append(dict(name=lay.name, format=fmt, codes=allowed.tolist(), counts=counts.tolist(),
                        weights=int(counts.sum()), used=int((counts > 0).sum()),
                        entropy=float(-(p * np.log2(p)).sum()), capacity=math.log2(len(allowed)),
                        bits=FORMATS[fmt].bits))
    return out


def store_keys(ctx: Any) -> dict[str, str]:
    """Every stage of the run -> its store key, in pipeline order: this stage's and its inputs' keys
    from the context, and the keys of stages it does not read directly (library) from the inputs'
    summaries, each of which names its own inputs' keys."""
    keys = dict(ctx.input_keys)
    for path in ctx.inputs.values():
        keys.update(_summary(path).get("inputs", {}))
    keys[ctx.stage.name] = ctx.key
    return dict(sorted(keys.items(), key=lambda kv: ORDER.index(kv[0]) if kv[0] in ORDER else len(ORDER)))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def chip_figures(inputs: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Figures of the firmware/emulate stages of this run (bookkeeping fields left out)."""
    skip = {"config", "inputs", "key", "stage"}
    return {name: flatten({k: v for k, v in _summary(inputs[name]).items() if k not in skip})
            for name in CHIP_STAGES}


def model_text(model: PackedModel) -> str:
    """e.g. `fc: 16x16 -> fc1 64 -> fc2 64 -> fc3 64 -> fc4 10` (output shape of every layer)."""
    n = model.image_size
    shapes = [f"{lay.name} " + TIMES.join(str(s) for s in lay.out_shape) for lay in model.layers]
    return f"{model.kind}: {n}{TIMES}{n}{ARROW}" + ARROW.join(shapes)


def formats_text(model: PackedModel) -> str:
    fmts = [lay.format for lay in model.layers]
    if len(set(fmts)) == 1:
        return fmts[0]
    return ", ".join(f"{lay.name} {lay.format}" for lay in model.layers)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def training_section(history: list[dict[str, Any]], out: Path, kept: int | None = None) -> tuple[str, list[str]]:
    """kept: the epoch whose weights the train stage kept (its summary's selected_epoch; None = the last)."""
    if not history:
        return ("<p>This run's train entry holds no training history (metrics.json absent or empty, "
                "as for an imported checkpoint).</p>", [])
    fig = figs.training_curves(history, out / "training.png").name
    judged = [h for h in history if h.get("val_acc") is not None]
    if judged:
        best = max(judged, key=lambda h: h["val_acc"])
        val = (f"validation accuracy after the last epoch {_pct(judged[-1]['val_acc'])}, best "
               f"{_pct(best['val_acc'])} after epoch {best['epoch']}"
               + (f"; the model is epoch {kept}'s, chosen on validation (train.select: best_val)"
                  if kept is not None and kept != history[-1]["epoch"] else "")
               + "; the test set is evaluated once, after training")
    else:
        val = "no validation split (train.val_images: 0), so no per-epoch accuracy"
    text = (f"<p>{len(history)} epochs; final training loss {history[-1]['train_loss']:.4f}; {val}. "
            f"Clip values and code entropy are those in force during each epoch.</p>")
    return text + figure(fig, "training curves"), [fig]


def errors_section(images: np.ndarray, labels: np.ndarray, preds: np.ndarray, classes: int,
                   out: Path) -> tuple[str, list[str]]:
    conf = confusion(labels, preds, classes)
    wrong = np.flatnonzero(preds != labels)
    made = [figs.confusion_matrix(conf, out / "confusion.png").name]
    per_class = [("images", *conf.sum(1)), ("correct", *np.diag(conf)),
                 ("accuracy", *(f"{100 * c / max(t, 1):.2f}%" for c, t in zip(np.diag(conf), conf.sum(1))))]
    html = (f"<p>Predictions of the exported integer model on all {len(labels):,} test images: "
            f"{len(wrong):,} misclassified.</p>" + figure(made[0], "confusion matrix")
            + table(["true digit", *map(str, range(classes))], per_class))
    if len(wrong):
        shown = wrong[:SHOWN_ERRORS]
        made.append(figs.misclassified_grid(images[shown], labels[shown], preds[shown], shown,
                                            out / "misclassified.png").name)
        html += (f"<p>The first {len(shown)} misclassified test images, as the model sees them "
                 f"({images.shape[1]}{TIMES}{images.shape[2]}):</p>" + figure(made[1], "misclassified digits"))
    return html, made


def codes_section(usage: list[dict[str, Any]], out: Path) -> tuple[str, list[str]]:
    fig = figs.code_histograms(usage, out / "weight_codes.png").name
    rows = [(u["name"], u["format"], f"{u['weights']:,}", f"{u['used']} of {len(u['codes'])}",
             f"{u['entropy']:.3f}", f"{u['capacity']:.2f}", f"{u['bits']:g}") for u in usage]
    return (figure(fig, "weight-code histograms")
            + table(["layer", "format", "weights", "codes used", "entropy (bits)", "log2(codes)",
                       "stored bits/weight"], rows, text_cols=2)), [fig]


def memory_section(export: dict[str, Any], chip: dict[str, Any], out: Path) -> tuple[str, list[str]]:
    rows = export["layers"]
    fig = figs.memory_budget(rows, export, chip, out / "memory.png").name
    layers = table(["layer", "kind", "format", "weights", "bits/weight", "flash B", "activation B"],
                    [(r["layer"], r["kind"], r["format"], f"{r['weights']:,}", f"{r['bits_per_weight']:g}",
                      f"{r['flash_bytes']:,}", f"{r['activation_bytes']:,}") for r in rows], text_cols=3)
    text = (f"<p>Model flash (weights, shifts, layer table): {export['flash_bytes']:,} B of "
            f"{export['target_flash_bytes']:,} B; engine buffers (int32 accumulators + int8 activations, "
            f"one of each, reused by every layer): {export['peak_ram_bytes']:,} B of "
            f"{export['target_ram_bytes']:,} B RAM on the {esc(export['target'])}"
            + ("; a layer output marked streamed is larger than those buffers and is computed a slice at a time, "
               "never held whole (engine/CONTRACT.md)"
               if figs.streamed_layers(rows, export["peak_ram_bytes"]) else "") + ".</p>")
    return figure(fig, "memory budget") + text + layers, [fig]


def verify_section(verify: dict[str, Any]) -> str:
    n = verify["images"]
    rows = [(engine, f"{round(acc * n):,} of {n:,}", _pct(acc)) for engine, acc in verify["accuracy"].items()]
    mism = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in verify["mismatches"].items())
    return (f"<p>All {n:,} test images through each engine; every activation of layers "
            f"{esc(', '.join(verify['layers_compared']))} and every shift compared. Mismatching values: "
            f"{esc(mism)}.</p>" + table(["engine", "correct", "test accuracy"], rows))


def chip_section(chip: dict[str, dict[str, Any]]) -> str:
    return "\n".join(f"<h3>{esc(name)}</h3>"
                     + table(["figure", "value"], [(k, fmt_value(v)) for k, v in values.items()], 2)
                     for name, values in chip.items())


def config_values(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The stage's view of the config (every key it declares), in the schema's order."""
    return {k: cfg[k] for k in SCHEMA if k in cfg}


def reproduce_section(cfg: dict[str, Any], keys: dict[str, str]) -> str:
    tree: dict[str, dict[str, Any]] = {}
    for k, v in cfg.items():
        section, leaf = k.split(".", 1)
        tree.setdefault(section, {})[leaf] = v
    return ("<p>Store entries of this run (<code>artifacts/store/&lt;stage&gt;/&lt;key&gt;/</code>). With the "
            "same code, a config with the values below has exactly these keys, so "
            "<code>./run doit cfg=configs/NAME.yaml report</code> with it rebuilds nothing that is "
            "still in the store.</p>"
            + table(["stage", "store key"], keys.items(), text_cols=2)
            + "<p>The config as a preset file (every key that can change a result; where-and-how keys "
              "such as <code>data.mnist_dir</code> or <code>mcu.port</code> are left out):</p><pre>"
            + esc(yaml.safe_dump(tree, sort_keys=False, default_flow_style=None)) + "</pre>")


def run(ctx) -> dict:
    out = ctx.out
    model = export.model(ctx.input("export"))
    exported, verify = _summary(ctx.input("export")), _summary(ctx.input("verify"))
    history = train.metrics(ctx.input("train"))
    images, labels = mnist_test(ctx.input("data"))
    preds = predictions(model, images)
    accuracy = float((preds == labels).mean())
    classes = int(model.num_classes)
    chip = chip_figures(ctx.inputs)
    keys = store_keys(ctx)

    kept = _summary(ctx.input("train")).get("selected_epoch")
    with_figures = [("training", "Training", training_section(history, out, kept)),
                    ("errors", "Test-set errors", errors_section(images, labels, preds, classes, out)),
                    ("codes", "Weight codes", codes_section(code_usage(model), out)),
                    ("memory", "Memory budget", memory_section(exported, chip["firmware"], out))]
    made = [f for _, _, (_, files) in with_figures for f in files]
    sections = [(sid, head, inner) for sid, head, (inner, _) in with_figures]
    sections += [("verify", "Accuracy per engine", verify_section(verify)),
                 ("chip", "On the chip", chip_section(chip)),
                 ("reproduce", "Reproduce", reproduce_section(config_values(ctx.cfg), keys))]
    cards = [card("config", "(opened from the store)", "config-name"),
             card("model", model_text(model)),
             card("weight formats", formats_text(model)),
             card("test accuracy (integer eval)", _pct(accuracy)),
             card("model flash", f"{exported['flash_bytes']:,} B of {exported['target_flash_bytes']:,} B")]
    (out / PAGE).write_text(page("bitmcu run report", cards, sections))
    wrong = int((preds != labels).sum())
    ctx.log(f"{PAGE} with {len(made)} figures: test accuracy {_pct(accuracy)}, {wrong} misclassified, "
            f"model flash {exported['flash_bytes']} B" + ("" if chip else "; no firmware figures in this run"))
    return {"page": PAGE, "figures": made, "test_accuracy_int": accuracy, "misclassified": wrong,
            "model_flash_bytes": exported["flash_bytes"], "chip_stages": list(chip)}
