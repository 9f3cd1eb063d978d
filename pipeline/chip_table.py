"""Every finished run in the store, per chip: `python -m pipeline.chip_table` writes a Pareto table and plot for
each `mcu.target` (artifacts/chips/<chip>/table.md, pareto.png, results.csv) and prints the tables.

Runs come from presets, sweeps and searches alike (artifacts/runs/<run>/<stage>, the stages' own summaries).
Runs whose train and export keys differ only in `train.seed` form one row: each seed's test accuracy, their mean
and standard deviation, the validation mean. Runs that are the same trainings and exports under two names (a
sweep that repeats another's) count once. A row is on the Pareto front when no other row of the chip has at least its
validation accuracy with at most its model flash, validation being what model selection may look at; the
most accurate row on validation among those with at least MIN_SEEDS seeds is marked as the chip's pick (on a tie,
the smaller model).
Firmware flash, RAM and cycles per inference come from the row's latest firmware and emulate runs, where any ran
(the firmware settings, e.g. mcu.kernels, change them but not the accuracy).
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path
from typing import Any

from pipeline.stage import summary
from pipeline.sweep import save_size_plot, size_axes

MIN_SEEDS = 3
STAGES = ("train", "export", "firmware", "emulate")
NOT_SETTING = ("train.seed",)        # what varies within a row


def _summaries(run: Path) -> dict[str, dict[str, Any]]:
    return {s: summary(run / s) for s in STAGES if (run / s / "summary.json").is_file()}


def describe(cfg: dict[str, Any]) -> str:
    """A short name of a setting from its train and export keys: kind, size, widths, formats, input, epochs."""
    fmts = cfg["quant.formats"]
    fmts = fmts[0] if len(set(fmts)) == 1 else "/".join(fmts)
    kind = (f"CNN {cfg['model.cnn_channels']} ch{' + pw1' if cfg.get('model.mix') else ''}"   # older runs lack it
            if cfg["model.kind"] == "cnn" else "FC")
    n = cfg["data.image_size"]
    return f"{kind} {'/'.join(map(str, cfg['model.widths']))} {fmts}, {n}x{n}, {cfg['train.epochs']} ep"


def collect(runs_dir: Path) -> list[dict[str, Any]]:
    """One dict per finished run (train and export done): chip, setting, seed, figures; rows_by_chip counts runs
    with the same train and export entries once."""
    out = []
    for run in sorted(p for p in Path(runs_dir).iterdir() if p.is_dir()):
        s = _summaries(run)
        if "train" not in s or "export" not in s or s["train"].get("test_accuracy_int") is None:
            continue
        ident = (s["train"]["key"], s["export"]["key"])
        fw, emu = s.get("firmware"), s.get("emulate")
        cfg = {**s["train"]["config"], **s["export"]["config"]}
        out.append({
            "run": run.name, "ident": ident, "chip": s["export"]["target"], "seed": cfg.get("train.seed"),
            "when": max((run / st / "summary.json").stat().st_mtime for st in ("firmware", "emulate") if st in s)
            if fw is not None else 0.0,
            "setting": repr(sorted((k, v) for k, v in cfg.items() if k not in NOT_SETTING)),
            "model": describe(cfg), "test": float(s["train"]["test_accuracy_int"]),
            "val": None if s["train"].get("val_accuracy_int") is None else float(s["train"]["val_accuracy_int"]),
            "flash_bytes": int(s["export"]["flash_bytes"]),
            # RISC-V: bytes of flash; Padauk: ROM words
            "firmware_flash": None if fw is None else fw.get("flash_used", fw.get("rom_words")),
            "ram": None if fw is None or "ram_used" not in fw else int(fw["ram_used"]),
            "cycles": None if emu is None else float(emu["cycles"]["mean"]),
        })
    return out


def rows_by_chip(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per chip, one row per setting (its runs' seeds folded together), with Pareto and pick marks."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["chip"], r["setting"]), []).append(r)
    chips: dict[str, list[dict[str, Any]]] = {}
    for (chip, _), found in groups.items():
        latest = max(found, key=lambda r: r["when"])
        by_ident: dict[tuple[str, str], dict[str, Any]] = {}
        for r in sorted(found, key=lambda r: r["run"]):      # one run per training and export
            by_ident.setdefault(r["ident"], r)
        rs = sorted(by_ident.values(), key=lambda r: (r["seed"] is None, r["seed"]))
        tests = [100 * r["test"] for r in rs]
        vals = [100 * r["val"] for r in rs if r["val"] is not None]
        chips.setdefault(chip, []).append({
            "model": rs[0]["model"], "runs": [r["run"] for r in rs], "seeds": [r["seed"] for r in rs],
            "tests": tests, "test_mean": statistics.mean(tests),
            "test_std": statistics.stdev(tests) if len(tests) > 1 else None,
            "val_mean": statistics.mean(vals) if len(vals) == len(rs) else None,
            "flash_bytes": rs[0]["flash_bytes"], "firmware_flash": latest["firmware_flash"], "ram": latest["ram"],
            "cycles": latest["cycles"],
        })
    for rows in chips.values():
        judged = [r for r in rows if r["val_mean"] is not None]
        for r in rows:
            r["pareto"] = r["val_mean"] is not None and not any(
                o["val_mean"] >= r["val_mean"] and o["flash_bytes"] <= r["flash_bytes"]
                and (o["val_mean"], o["flash_bytes"]) != (r["val_mean"], r["flash_bytes"]) for o in judged)
            r["pick"] = False
        seeded = [r for r in judged if len(r["tests"]) >= MIN_SEEDS]
        if seeded:
            max(seeded, key=lambda r: (r["val_mean"], -r["flash_bytes"]))["pick"] = True   # a tie: the smaller
        rows.sort(key=lambda r: (r["flash_bytes"], -r["test_mean"]))
    return chips


def _n(v: float | int | None, fmt: str = ",.0f") -> str:
    return "-" if v is None else format(v, fmt)


def table(chip: str, rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"# {chip}: every finished run in the store", "",
             f"Pareto: no other row has at least its validation accuracy with at most its model flash. Pick: the "
             f"best validation mean among rows with at least {MIN_SEEDS} seeds.", "",
             "| model | seeds: test accuracy | test mean ± std | validation mean | model flash B | firmware flash "
             "(B; Padauk: ROM words) | RAM B | cycles | Pareto | pick | runs |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        std = "" if r["test_std"] is None else f" ± {r['test_std']:.2f}"
        runs = r["runs"][0] + (f" (+{len(r['runs']) - 1})" if len(r["runs"]) > 1 else "")
        lines.append(f"| {r['model']} | {' / '.join(f'{t:.2f}' for t in r['tests'])} | {r['test_mean']:.2f}%{std} | "
                     f"{_n(r['val_mean'], '.2f')} | {r['flash_bytes']:,} | {_n(r['firmware_flash'])} | {_n(r['ram'])} | "
                     f"{_n(r['cycles'])} | {'*' if r['pareto'] else ''} | {'best' if r['pick'] else ''} | {runs} |")
    return lines


def write(chips: dict[str, list[dict[str, Any]]], out: Path) -> list[Path]:
    written = []
    for chip, rows in sorted(chips.items()):
        d = Path(out) / chip
        d.mkdir(parents=True, exist_ok=True)
        (d / "table.md").write_text("\n".join(table(chip, rows)) + "\n")
        with open(d / "results.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["model", "seeds", "tests", "test_mean", "test_std", "val_mean", "flash_bytes",
                        "firmware_flash", "ram", "cycles", "pareto", "pick", "runs"])
            for r in rows:
                w.writerow([r["model"], " ".join(map(str, r["seeds"])), " ".join(f"{t:.2f}" for t in r["tests"]),
                            f"{r['test_mean']:.4f}", "" if r["test_std"] is None else f"{r['test_std']:.4f}",
                            "" if r["val_mean"] is None else f"{r['val_mean']:.4f}", r["flash_bytes"],
                            r["firmware_flash"] or "", r["ram"] or "", r["cycles"] or "", r["pareto"], r["pick"],
                            " ".join(r["runs"])])
        fig, ax = size_axes()
        for key, label, marker in (("val_mean", "validation mean", "o"), ("test_mean", "test mean", "x")):
            pts = [(r["flash_bytes"], r[key]) for r in rows if r[key] is not None]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=label, zorder=3)
        front = sorted((r["flash_bytes"], r["val_mean"]) for r in rows if r["pareto"])
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", alpha=0.6, label="Pareto front (validation)")
        save_size_plot(fig, ax, d / "pareto.png", "accuracy, integer inference (%)", f"{chip}: every run in the store")
        written += [d / "table.md", d / "results.csv", d / "pareto.png"]
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.chip_table", description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=Path, default=Path("artifacts/runs"), help="the store's run folder")
    ap.add_argument("--out", type=Path, default=Path("artifacts/chips"), help="where the tables go")
    args = ap.parse_args(argv)
    if not args.runs.is_dir():
        print(f"{args.runs}: no such folder (give the store's runs folder with --runs)", file=sys.stderr)
        return 1
    chips = rows_by_chip(collect(args.runs))
    if not chips:
        print(f"{args.runs}: no finished runs (train and export) yet", file=sys.stderr)
        return 1
    for chip, rows in sorted(chips.items()):
        print("\n".join(table(chip, rows)) + "\n")
    for p in write(chips, args.out):
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
