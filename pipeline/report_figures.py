"""The report's PNG figures, drawn with matplotlib's Agg canvas (no display, no pyplot state).

Each function takes plain numbers (numpy arrays, dicts read from the stages' JSON) and writes one
PNG. The PNGs carry no software/version metadata, so the same run gives the same bytes.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

DPI = 100


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    return path


def _mean(v: float | Sequence[float]) -> float:
    """A clip value: one per layer, or one per output row (per_output scaling), shown as their mean."""
    return float(np.mean(v))


def training_curves(history: list[dict[str, Any]], path: Path) -> Path:
    """Loss, accuracy, learning rate, clip values, code entropy and time, one panel each, by epoch."""
    epochs = [h["epoch"] for h in history]
    layers = list(history[0]["clip"])
    marker = "o" if len(epochs) <= 20 else None  # a short run's few points stay visible
    fig = Figure(figsize=(13, 7.5), layout="constrained")
    ax = fig.subplots(2, 3).ravel()

    ax[0].plot(epochs, [h["train_loss"] for h in history], marker=marker)
    ax[0].set(title="training loss (cross-entropy)", ylabel="loss")

    train_acc = [100 * h["train_acc"] for h in history]
    val_acc = [100 * h["val_acc"] for h in history if h.get("val_acc") is not None]
    ax[1].plot(epochs, train_acc, marker=marker, label="train (augmented, QAT forward)")
    if val_acc:
        ax[1].plot(epochs, val_acc, marker=marker, label="validation (held-out training images)")
    skip = len(epochs) // 10
    later = train_acc[skip:] + val_acc[skip:]
    ax[1].set_ylim(max(0.0, min(later) - 0.5), 100)  # zoom past the first epochs' low values
    ax[1].set(title="accuracy" + (f" (final validation {val_acc[-1]:.2f}%)" if val_acc else ""), ylabel="accuracy (%)")
    ax[1].legend(fontsize=9)

    ax[2].plot(epochs, [h["lr"] for h in history], marker=marker)
    ax[2].set(title="learning rate (during the epoch)", ylabel="lr")
    ax[2].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))  # no offset text over the title

    per_row = any(np.ndim(h["clip"][k]) for h in history for k in layers)
    for k in layers:
        ax[3].plot(epochs, [_mean(h["clip"][k]) for h in history], marker=marker, label=k)
    ax[3].set(title="clip value per layer" + (" (mean over output rows)" if per_row else ""),
              ylabel="clip (weight units)")
    ax[3].legend(fontsize=9, ncol=2)

    for k in layers:
        ax[4].plot(epochs, [h["entropy"][k] for h in history], marker=marker, label=k)
    ax[4].set(title="weight-code entropy per layer", ylabel="bits per weight")
    ax[4].legend(fontsize=9, ncol=2)

    ax[5].plot(epochs, [h["seconds"] for h in history], marker=marker)
    ax[5].set(title="time per epoch", ylabel="seconds")
    ax[5].set_ylim(bottom=0)
    for a in ax:
        a.set_xlabel("epoch")
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.grid(alpha=0.3)
    return _save(fig, path)


def confusion_matrix(conf: np.ndarray, path: Path) -> Path:
    """10x10 counts, true label down, predicted across; colour on a log scale so errors show."""
    n = conf.shape[0]
    fig = Figure(figsize=(7.5, 6.5), layout="constrained")
    ax = fig.subplots()
    shown = np.where(conf > 0, conf, np.nan)  # empty cells stay white
    im = ax.imshow(shown, cmap="Blues", norm=LogNorm(vmin=1, vmax=max(2, int(conf.max()))))
    fig.colorbar(im, ax=ax, label="images (log scale)")
    dark = np.log(np.maximum(conf, 1)) > 0.6 * np.log(max(2, int(conf.max())))
    for t in range(n):
        for p in range(n):
            if conf[t, p]:
                ax.text(p, t, str(int(conf[t, p])), ha="center", va="center", fontsize=9,
                        color="white" if dark[t, p] else "black")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set(xlabel="predicted digit", ylabel="true digit",
           title=f"confusion matrix: {int(np.trace(conf))} of {int(conf.sum())} correct")
    return _save(fig, path)


def misclassified_grid(images: np.ndarray, true: np.ndarray, pred: np.ndarray, index: np.ndarray,
                       path: Path, cols: int = 8) -> Path:
    """The given test digits as the model sees them (NxN), each titled true -> predicted."""
    rows = math.ceil(len(images) / cols)
    fig = Figure(figsize=(1.35 * cols, 1.55 * rows + 0.5), layout="constrained")
    fig.suptitle("misclassified test digits: true \u2192 predicted (test image index)", fontsize=11)
    for i, ax in enumerate(fig.subplots(rows, cols, squeeze=False).ravel()):
        ax.set_axis_off()
        if i < len(images):
            ax.imshow(images[i], cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(f"{int(true[i])} \u2192 {int(pred[i])}  (#{int(index[i])})", fontsize=9)
    return _save(fig, path)


def code_histograms(layers: list[dict[str, Any]], path: Path) -> Path:
    """One panel per weight layer: how often each code of its format occurs.

    layers: dicts with name, format, codes (every code the format allows), counts (same order),
    used (codes with a count), entropy (bits) and capacity (log2 of the number of codes).
    """
    cols = min(len(layers), 2 if len(layers) <= 4 else 3)
    rows = math.ceil(len(layers) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), layout="constrained")
    for ax, lay in zip(fig.subplots(rows, cols, squeeze=False).ravel(), layers):
        codes, counts = np.asarray(lay["codes"]), np.asarray(lay["counts"])
        pos = np.arange(len(codes))
        ax.bar(pos, 100 * counts / counts.sum(), width=0.8, color="tab:blue")
        step = max(1, len(codes) // 16)  # 8bit has 256 codes: label every 16th
        ax.set_xticks(pos[::step], [str(int(c)) for c in codes[::step]], fontsize=8,
                      rotation=90 if len(codes) > 16 else 0)
        ax.set_title(f"{lay['name']} ({lay['format']}): {lay['used']}/{len(codes)} codes used\n"
                     f"entropy {lay['entropy']:.2f} of {lay['capacity']:.2f} bits", fontsize=10)
        ax.set(xlabel="weight code", ylabel="% of weights")
        ax.grid(axis="y", alpha=0.3)
    for ax in fig.axes[len(layers):]:
        ax.set_axis_off()
    return _save(fig, path)


def streamed_layers(rows: list[dict[str, Any]], buffer_bytes: int) -> list[str]:
    """Layers whose output is larger than the engine's buffers: never whole in RAM, the streaming driver
    computes it a slice at a time."""
    return [r["layer"] for r in rows if r["activation_bytes"] > buffer_bytes]


def memory_budget(rows: list[dict[str, Any]], totals: dict[str, Any], chip: dict[str, int],
                  path: Path) -> Path:
    """Flash and RAM per layer against the chip's limits (export's table; the firmware's totals if built).

    rows: export's per-layer table (layer, flash_bytes, activation_bytes); totals: export's model
    flash_bytes, peak_ram_bytes, target, target_flash_bytes, target_ram_bytes; chip: the firmware's
    flash_used / ram_used when the firmware stage is part of the run, else empty.
    """
    table = totals["flash_bytes"] - sum(r["flash_bytes"] for r in rows)   # layer table, model struct, start
    flash = [(r["layer"], r["flash_bytes"]) for r in rows] + [("tables", table),
                                                                ("model total", totals["flash_bytes"])]
    streamed = {f"{name} output" for name in streamed_layers(rows, totals["peak_ram_bytes"])}
    ram = ([(f"{r['layer']} output", r["activation_bytes"]) for r in rows]
           + [("engine buffers", totals["peak_ram_bytes"])])
    if "flash_used" in chip:
        flash.append(("firmware total", chip["flash_used"]))
    if "ram_used" in chip:
        ram.append(("firmware total", chip["ram_used"]))
    fig = Figure(figsize=(13, 0.45 * max(len(flash), len(ram)) + 1.8), layout="constrained")
    panels = ((flash, totals["target_flash_bytes"], "flash"), (ram, totals["target_ram_bytes"], "RAM"))
    for ax, (bars, limit, what) in zip(fig.subplots(1, 2), panels):
        names, sizes = [b[0] for b in bars], [b[1] for b in bars]
        colors = ["tab:blue" if "total" not in n and n != "engine buffers" else "tab:orange" for n in names]
        y = np.arange(len(bars))[::-1]
        shown = [min(s, 1.2 * limit) for s in sizes]   # a bar past the axis is cut; its label gives the size
        ax.barh(y, shown, color=colors)
        for yi, s, w, n in zip(y, sizes, shown, names):
            inside = w > 0.6 * limit  # a long bar carries its label inside, clear of the limit line
            ax.text(w - limit * 0.01 if inside else w + limit * 0.01, yi,
                    f"{s:,} B ({100 * s / limit:.1f}%)" + (", streamed" if n in streamed else ""),
                    va="center", ha="right" if inside else "left", color="white" if inside else "black",
                    fontsize=9)
        ax.axvline(limit, color="tab:red", linestyle="--", label=f"{totals['target']} {what}: {limit:,} B")
        ax.legend(loc="upper right", fontsize=9)
        ax.set_yticks(y, names)
        ax.set_xlim(0, limit * 1.25)  # room for the labels right of the limit line
        ax.set(xlabel="bytes", title=f"{what} against the {totals['target']}'s {limit:,} B")
        ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)
