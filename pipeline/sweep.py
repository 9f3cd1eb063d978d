"""Sweeps: one YAML file expands into many runs that share the store, then a Pareto table and plot.

A sweep file is a normal config (its sections override the base preset for every run) plus a `sweep`
section:

    sweep:
      base: configs/default.yaml      # optional preset the runs start from (default: schema defaults)
      stage: verify                   # last stage each run builds (default: verify)
      grid:                           # cartesian product, in the order written
        quant.formats: [4bitsym, ternary]
        model.widths: [[32, 32], [64, 64, 64]]
      runs:                           # optional explicit points, after the grid's
        - {quant.formats: fp130}

Each point becomes `<store>/sweeps/<sweep>/<sweep>-NN.yaml`, a complete config, so any single run can be
repeated by hand (`doit cfg=<that file> verify`) or handed to another machine. Identical stages of
different runs have the same store key and are built once (the store locks each entry). This module
imports no torch: `doit` builds its task list from it.
"""
from __future__ import annotations

import csv
import itertools
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from pipeline import config
from pipeline.config import ConfigError
from pipeline.stage import summary

SWEEP_KEYS = ("base", "stage", "grid", "runs")
# BitNetMCU's published points (its README's model tables): (label, model size in bytes, test accuracy).
# Sizes are its kB figures (1 kB = 1024 B, as rounded in its tables), so they carry +-50 B.
BITNETMCU_POINTS = (
    ("FC 16/16 2bitsym", 1.1 * 1024, 0.9422),
    ("FC 64/64/64 4bitsym", 12.3 * 1024, 0.9902),
    ("FC 64/64/64 FP130", 12.3 * 1024, 0.9886),
    ("CNN-16 small", 3.2 * 1024, 0.9892),
    ("CNN-16", 5.4 * 1024, 0.9906),
    ("CNN-32", 7.3 * 1024, 0.9928),
    ("CNN-48", 9.3 * 1024, 0.9944),
    ("CNN-64", 11.0 * 1024, 0.9955),
)


@dataclass(frozen=True)
class Sweep:
    name: str
    path: str
    stage: str
    runs: tuple[config.Config, ...]  # each named <sweep>-NN, with its config file written out
    points: tuple[dict[str, Any], ...]  # the swept values of each run, for the table


def has_section(path: str | Path, section: str) -> bool:
    """True when the YAML file has that top-level section (a sweep's `sweep`, a search's `search`)."""
    try:
        tree = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False  # config.load reports the problem
    return isinstance(tree, dict) and section in tree


def is_sweep(path: str | Path) -> bool:
    return has_section(path, "sweep")


def _point_values(where: str, point: Any) -> dict[str, Any]:
    if not isinstance(point, dict) or not point:
        raise ConfigError(f"{where}: must be a non-empty mapping of dotted config keys to values; got {point!r}")
    flat = config.flatten(point)
    unknown = [k for k in flat if k not in config.SCHEMA]
    if unknown:
        raise ConfigError("\n".join(f"{where}: {k}: unknown key (did you mean {config.closest(k)}?)"
                                    for k in unknown))
    return flat


def base_values(spec: Mapping[str, Any], where: str, what: str) -> dict[str, Any]:
    """The values of the preset named by a sweep or search section's `base` ({} without one); `what` names
    what starts from it (runs, trials) in the error."""
    if spec.get("base") is None:
        return {}
    try:
        return dict(config.load(spec["base"]).values)
    except ConfigError as e:
        raise ConfigError(f"{where}.base: {spec['base']}: the preset the {what} start from cannot be "
                          f"used:\n{e}") from None


def load(path: str | Path, out_dir: Path, stages: tuple[str, ...], threads: int = 1) -> Sweep:
    """Validate a sweep file, expand it, write every run's config under out_dir/<sweep>/."""
    p = Path(path)
    tree = yaml.safe_load(p.read_text()) or {}
    spec = tree.pop("sweep")
    if not isinstance(spec, dict):
        raise ConfigError(f"{p}: sweep: must be a mapping (allowed keys: {', '.join(SWEEP_KEYS)})")
    bad = [k for k in spec if k not in SWEEP_KEYS]
    if bad:
        raise ConfigError(f"{p}: sweep.{bad[0]}: unknown key (allowed: {', '.join(SWEEP_KEYS)})")
    stage = spec.get("stage", "verify")
    if stage not in stages:
        raise ConfigError(f"{p}: sweep.stage: unknown stage {stage!r} (allowed: {', '.join(stages)})")

    base = base_values(spec, f"{p}: sweep", "runs")
    common = config.flatten(tree)
    config.from_values({**base, **common}, name=p.stem, path=str(p))  # report problems of the shared part once

    grid = spec.get("grid") or {}
    if not isinstance(grid, dict) or any(not isinstance(v, list) or not v for v in grid.values()):
        raise ConfigError(f"{p}: sweep.grid: must map dotted config keys to non-empty lists of values")
    grid = _point_values(f"{p}: sweep.grid", grid) if grid else {}
    points = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())] if grid else []
    extra = spec.get("runs") or []
    if not isinstance(extra, list):
        raise ConfigError(f"{p}: sweep.runs: must be a list of mappings of dotted config keys to values")
    points += [_point_values(f"{p}: sweep.runs[{i}]", pt) for i, pt in enumerate(extra)]
    if not points:
        raise ConfigError(f"{p}: sweep: has no runs (give sweep.grid and/or sweep.runs)")

    run_dir = out_dir / p.stem
    run_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for i, point in enumerate(points):
        name = f"{p.stem}-{i:02d}"
        values = {**base, "train.threads": threads, **common, **point}
        cfg_path = run_dir / f"{name}.yaml"
        cfg = config.from_values(values, name=name, path=str(cfg_path))
        write_config(cfg_path, cfg.values, f"run {i} of sweep {p} ({_describe(point)})")
        runs.append(cfg)
    return Sweep(p.stem, str(p), stage, tuple(runs), tuple(points))


def write_config(path: Path, values: Mapping[str, Any], comment: str) -> None:
    """A complete config as a preset file (sections of sorted keys) under a comment line; unchanged files are
    left alone."""
    tree: dict[str, dict[str, Any]] = {}
    for k, v in values.items():
        section, leaf = k.split(".", 1)
        tree.setdefault(section, {})[leaf] = v
    text = f"# {comment}\n" + yaml.safe_dump(tree, sort_keys=True)
    if not path.is_file() or path.read_text() != text:  # keep mtimes of unchanged runs
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


def _describe(point: Mapping[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return "x".join(map(str, v)) if isinstance(v, list) else str(v)
    return ", ".join(f"{k}={fmt(v)}" for k, v in point.items())


def _summary(runs_dir: Path, run: str, stage: str) -> dict[str, Any] | None:
    entry = runs_dir / run / stage
    return summary(entry) if entry.is_dir() else None


def pareto(rows: list[dict[str, Any]]) -> set[str]:
    """Names of the runs no other run beats on both size (smaller) and accuracy (higher)."""
    front = set()
    for r in rows:
        dominated = any(o["flash_bytes"] <= r["flash_bytes"] and o["accuracy"] >= r["accuracy"]
                        and (o["flash_bytes"], o["accuracy"]) != (r["flash_bytes"], r["accuracy"])
                        for o in rows)
        if not dominated:
            front.add(r["run"])
    return front


def collect(sweep: Sweep, store_root: Path) -> list[dict[str, Any]]:
    """One row per finished run: swept values, integer-eval accuracy, model flash bytes, weights."""
    rows = []
    for cfg, point in zip(sweep.runs, sweep.points):
        train = _summary(store_root / "runs", cfg.name, "train")
        export = _summary(store_root / "runs", cfg.name, "export")
        if train is None or export is None:
            continue
        verify = _summary(store_root / "runs", cfg.name, "verify")
        emulate = _summary(store_root / "runs", cfg.name, "emulate")
        rows.append({
            "run": cfg.name, "point": _describe(point),
            "group": _describe({k: v for k, v in point.items() if k != "train.seed"}), "seed": point.get("train.seed"),
            "accuracy": float(train["test_accuracy_int"]),
            "val_accuracy": None if train.get("val_accuracy_int") is None else float(train["val_accuracy_int"]),
            # the epoch whose weights were kept (train.select) of how many: absent for an imported checkpoint
            "epoch": train.get("selected_epoch", train.get("epochs")), "epochs": train.get("epochs"),
            "flash_bytes": int(export["flash_bytes"]), "weights": int(export["weights"]),
            "verified": None if verify is None else all(v == 0 for v in verify["mismatches"].values()),
            "cycles": None if emulate is None else emulate["cycles"]["mean"],
        })
    front = pareto(rows)
    for r in rows:
        r["pareto"] = r["run"] in front
    return rows


def seed_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: for each setting run with two or more train.seed values, every seed's test accuracy and
    their mean and sample standard deviation ([] when no setting has several seeds)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["seed"] is not None:
            groups.setdefault(r["group"], []).append(r)
    groups = {g: sorted(rs, key=lambda r: r["seed"]) for g, rs in groups.items() if len(rs) > 1}
    if not groups:
        return []
    lines = ["", "Over seeds (test accuracy of the integer path; standard deviation with n - 1):", "",
             "| values | seeds | test accuracy per seed | mean | std | validation mean |", "|---|---|---|---|---|---|"]
    for g, rs in groups.items():
        acc = [100 * r["accuracy"] for r in rs]
        vals = [r["val_accuracy"] for r in rs if r["val_accuracy"] is not None]
        val = f"{100 * statistics.mean(vals):.2f}%" if len(vals) == len(rs) else "-"
        lines.append(f"| {g or '(base)'} | {', '.join(str(r['seed']) for r in rs)} | "
                     f"{' / '.join(f'{a:.2f}' for a in acc)} | {statistics.mean(acc):.2f}% | {statistics.stdev(acc):.2f} | {val} |")
    return lines


def write_report(sweep: Sweep, rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """results.csv, table.md and pareto.png in out; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    fields = ["run", "point", "seed", "accuracy", "val_accuracy", "epoch", "epochs", "flash_bytes", "weights",
              "verified", "cycles", "pareto"]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = [f"# Sweep {sweep.name} ({len(rows)} of {len(sweep.runs)} runs finished)", "",
             "| run | values | test accuracy (int) | validation | epoch kept | flash bytes | weights | verified | Pareto |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["flash_bytes"]):
        ver = {None: "-", True: "yes", False: "MISMATCH"}[r["verified"]]
        val = "-" if r["val_accuracy"] is None else f"{100 * r['val_accuracy']:.2f}%"
        kept = "-" if r["epochs"] is None else f"{r['epoch']} of {r['epochs']}"
        lines.append(f"| {r['run']} | {r['point']} | {100 * r['accuracy']:.2f}% | {val} | {kept} | {r['flash_bytes']:,} | "
                     f"{r['weights']:,} | {ver} | {'*' if r['pareto'] else ''} |")
    lines += seed_table(rows)
    (out / "table.md").write_text("\n".join(lines) + "\n")
    _plot(sweep, rows, out / "pareto.png")
    return [out / "results.csv", out / "table.md", out / "pareto.png"]


def size_axes():
    """A figure and axes for accuracy against model flash (headless), for sweeps and searches."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7.5, 4.8), dpi=120)


def save_size_plot(fig, ax, path: Path, ylabel: str, title: str) -> None:
    """Label, lay out and write a size_axes() figure to path, then free it."""
    import matplotlib.pyplot as plt

    ax.set_xlabel("model flash (bytes: weights, shifts, layer table)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot(sweep: Sweep, rows: list[dict[str, Any]], path: Path) -> None:
    fig, ax = size_axes()
    ours = sorted(rows, key=lambda r: r["flash_bytes"])
    ax.scatter([r["flash_bytes"] for r in ours], [100 * r["accuracy"] for r in ours],
               color="tab:blue", label="bitmcu runs", zorder=3)
    for r in ours:
        ax.annotate(r["run"].rsplit("-", 1)[-1], (r["flash_bytes"], 100 * r["accuracy"]),
                    textcoords="offset points", xytext=(4, 3), fontsize=7)
    front = [r for r in ours if r["pareto"]]
    ax.step([r["flash_bytes"] for r in front], [100 * r["accuracy"] for r in front], where="post",
            color="tab:blue", alpha=0.6, label="bitmcu Pareto front")
    ax.scatter([p[1] for p in BITNETMCU_POINTS], [100 * p[2] for p in BITNETMCU_POINTS],
               marker="x", color="tab:red", label="BitNetMCU (published)", zorder=3)
    for i, (label, size, acc) in enumerate(BITNETMCU_POINTS):  # alternate sides: two share a size
        ax.annotate(label, (size, 100 * acc), textcoords="offset points", xytext=(4, 4 if i % 2 else -9),
                    fontsize=6, color="tab:red")
    save_size_plot(fig, ax, path, "test accuracy, integer inference (%)", f"sweep {sweep.name}: accuracy against size")


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.sweep FILE`: write the run configs and print their paths, one per line.

    For schedulers other than doit (a cluster's job array, Dask, Ray): each printed config is one
    independent job `doit cfg=<path> <stage>` against a store on shared storage.
    """
    import argparse
    import sys

    from pipeline.graph import STAGES

    ap = argparse.ArgumentParser(prog="python -m pipeline.sweep", description=main.__doc__.split("\n")[0])
    ap.add_argument("file", help="sweep YAML file (a config with a `sweep:` section)")
    ap.add_argument("--threads", type=int, default=1, help="train.threads of each run unless the file sets it")
    args = ap.parse_args(argv)
    store = Path(os.environ.get("BITMCU_ARTIFACTS", "artifacts"))
    try:
        if not is_sweep(args.file):
            raise ConfigError(f"{args.file}: not a sweep file (no `sweep:` section)")
        sw = load(args.file, store / "sweeps", tuple(s.name for s in STAGES), args.threads)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(c.path for c in sw.runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
