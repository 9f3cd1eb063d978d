"""A search's results, from its study: table.md and results.csv of every trial, pareto.png, and best.yaml.

Each trial's figures are the user attributes its worker recorded (pipeline/search_study.py), so the report can
be written on any machine that reaches the study. The Pareto front is over (validation accuracy, model flash)
among the complete trials; best.yaml is the complete trial of the highest validation accuracy (the smaller
model on a tie), its config regenerated from the trial's parameters.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contract.chips import CHIPS
from pipeline import config
from pipeline.search import Search
from pipeline.search_study import OUTCOME, REASON
from pipeline.sweep import pareto, save_size_plot, size_axes, write_config

if TYPE_CHECKING:
    import optuna

FIELDS = ["trial", "state", "reason", "point", "val_accuracy", "test_accuracy", "model_flash", "model_ram",
          "firmware_flash", "firmware_ram", "cycles", "pareto", "config"]


def rows(study: "optuna.Study") -> list[dict[str, Any]]:
    """One row per trial that counts (finished with an outcome, or running or queued), in trial order."""
    from optuna.trial import TrialState

    out = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        state = a.get(OUTCOME) or {TrialState.RUNNING: "running", TrialState.WAITING: "queued"}.get(t.state)
        if state is None or state == "surplus":      # an interrupted attempt (its point was queued again)
            continue
        out.append({"trial": t.number, "state": state, "reason": a.get(REASON, ""), "point": a.get("point", ""),
                    **{k: a.get(k) for k in FIELDS[4:11]}, "config": a.get("config", "")})
    done = [{"run": r["trial"], "flash_bytes": r["model_flash"], "accuracy": r["val_accuracy"]}
            for r in out if r["state"] == "complete"]
    front = pareto(done)
    for r in out:
        r["pareto"] = r["trial"] in front
    return out


def best(table: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The complete trial of the highest validation accuracy; the smaller model flash breaks a tie."""
    done = [r for r in table if r["state"] == "complete"]
    return max(done, key=lambda r: (r["val_accuracy"], -r["model_flash"])) if done else None


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def write(search: Search, study: "optuna.Study") -> list[Path]:
    """table.md, results.csv, pareto.png and (once a trial is complete) best.yaml in search.out."""
    from optuna.trial import FixedTrial

    table = rows(study)
    out = search.out
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(table)
    chip = CHIPS[search.values["mcu.target"]]
    states = [r["state"] for r in table]
    lines = [f"# Search {search.name} on the {chip.name} ({len(table)} of {search.trials} trials: "
             + ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states)) + ")", "",
             f"Sampler {search.sampler}, pruner {search.pruner}. Chosen by validation accuracy "
             f"({search.values['train.val_images']} held-out training images); the test accuracy is shown, never "
             "used. Pareto: no complete trial has both a higher validation accuracy and a smaller model.", "",
             "| trial | state | values | validation | test | model flash B | firmware flash B | firmware RAM B "
             "| cycles | Pareto |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        state = r["state"] + (f": {r['reason']}" if r["state"] in ("pruned", "infeasible") else "")
        lines.append(f"| {r['trial']} | {state} | {r['point']} | {_pct(r['val_accuracy'])} | "
                     f"{_pct(r['test_accuracy'])} | {_num(r['model_flash'])} | {_num(r['firmware_flash'])} | "
                     f"{_num(r['firmware_ram'])} | {_num(r['cycles'])} | {'*' if r['pareto'] else ''} |")
    files = [out / "results.csv", out / "table.md", out / "pareto.png"]
    top = best(table)
    if top is not None:
        trial = study.trials[top["trial"]]
        cfg = search.trial_config(top["trial"], search.point(FixedTrial(trial.params, top["trial"])))
        write_config(out / "best.yaml", config.load(cfg.path).values,
                     f"best trial {top['trial']} of search {search.path}: validation {_pct(top['val_accuracy'])}, "
                     f"model flash {top['model_flash']:,} B; copy to configs/best_{chip.name}.yaml")
        lines += ["", f"Best: trial {top['trial']} ({top['point']}), validation {_pct(top['val_accuracy'])}, test "
                  f"{_pct(top['test_accuracy'])}: {out / 'best.yaml'}"]
        files.append(out / "best.yaml")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    _plot(search, table, out / "pareto.png")
    return files


def _plot(search: Search, table: list[dict[str, Any]], path: Path) -> None:
    fig, ax = size_axes()
    done = sorted((r for r in table if r["state"] == "complete"), key=lambda r: r["model_flash"])
    ax.scatter([r["model_flash"] for r in done], [100 * r["val_accuracy"] for r in done], color="tab:blue",
               label="validation (chooses)", zorder=3)
    ax.scatter([r["model_flash"] for r in done], [100 * r["test_accuracy"] for r in done], facecolors="none",
               edgecolors="tab:gray", label="test (reported only)", zorder=2)
    for r in done:
        ax.annotate(str(r["trial"]), (r["model_flash"], 100 * r["val_accuracy"]), textcoords="offset points",
                    xytext=(4, 3), fontsize=7)
    front = [r for r in done if r["pareto"]]
    ax.step([r["model_flash"] for r in front], [100 * r["val_accuracy"] for r in front], where="post",
            color="tab:blue", alpha=0.6, label="Pareto front (validation)")
    save_size_plot(fig, ax, path, "accuracy, integer inference (%)",
                   f"search {search.name} on the {search.values['mcu.target']}: accuracy against size")
