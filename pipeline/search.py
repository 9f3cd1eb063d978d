"""Search files: a config plus a `search:` section declaring a space of models; each trial is a complete config.

    mcu: {target: ch32v002, mode: serial}     # sections as in any preset: shared by every trial
    search:
      base: configs/default.yaml             # optional preset the trials start from (default: schema defaults)
      trials: 40                             # in all, over every worker sharing the study
      sampler: tpe                           # tpe | nsga2
      seed: 0
      space:
        model.kind: [fc, cnn]                # a list: one of these
        fc.depth: [2, 3]                     # hidden layers of an fc model ...
        fc.widths: [32, 64, 96]              # ... each one's width drawn from these
        cnn.channels: [16, 24, 32]           # model.cnn_channels of a cnn
        cnn.depth: [1, 2]                    # its FC layers after the convs ...
        cnn.widths: [32, 64]                 # ... and their widths
        quant.formats: [4bitsym, ternary]    # each weight layer's format drawn from these
        data.image_size: {low: 12, high: 16} # a range: an integer (or a float key's number), `step`, `log`
        train.epochs: [20, 40]               # any other scalar config key: a list or a range

The keys of `search:` are SEARCH_KEYS; docs/search.md explains each. Everything is checked when the file is
loaded, before any trial runs, and every problem names the file and the key. A trial's point becomes the config
`<store>/searches/<search>/trial-NNNN.yaml` (run name `<search>-trial-NNNN`), so any trial can be run again by
hand. This module imports neither torch nor Optuna (`doit` loads it to build its task list); the study is in
pipeline/search_study.py, the table and plot in pipeline/search_report.py.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import yaml

from contract.chips import CHIPS, RISCV_NAMES
from contract.spec import HIDDEN_LAYERS, KINDS, model_spec
from pipeline import config
from pipeline.config import SCHEMA, ConfigError
from pipeline.stage import Stage, upstream
from pipeline.sweep import base_values, has_section, write_config

SEARCH_KEYS = ("base", "trials", "sampler", "seed", "pruner", "emulate", "storage", "space")
SAMPLERS = ("tpe", "nsga2")
PRUNERS = ("median", "none")
# Space names that are not config keys: the architecture, drawn per model kind (model.widths and
# model.cnn_channels follow from them; cnn.channels is only drawn for a cnn, so an fc trial's key ignores it).
ARCH = {"fc.depth": "fc", "fc.widths": "fc", "cnn.depth": "cnn", "cnn.widths": "cnn", "cnn.channels": "cnn"}
# Config keys the space may not draw: the chip (a search is for one chip), and what ARCH and the per-layer
# formats set.
NOT_DRAWN = {"mcu.target": "a search is for one chip: set mcu.target in the file's mcu: section, one search "
             "file per chip", "model.widths": "give fc.depth and fc.widths (or cnn.depth and cnn.widths)",
             "model.cnn_channels": "give cnn.channels"}


class Trial(Protocol):
    """What a point is drawn from (an Optuna trial): categorical, integer and float suggestions by name."""
    def suggest_categorical(self, name: str, choices: Any) -> Any: ...
    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int: ...
    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...


@dataclass(frozen=True)
class Dist:
    """One dimension of the space: choices, or an integer / float range."""
    choices: tuple[Any, ...] | None = None
    low: float = 0
    high: float = 0
    step: int = 1
    log: bool = False
    kind: str = "choice"               # choice | int | float

    def draw(self, trial: Trial, name: str) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=self.step, log=self.log)
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def values(self) -> list[Any]:
        """Every value it can give (a float range: its ends)."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, self.step))
        return [self.low, self.high]


@dataclass(frozen=True)
class Search:
    name: str
    path: str
    out: Path                          # <store>/searches/<name>: trial configs, study.db, table, plot, best.yaml
    values: Mapping[str, Any]          # the config every trial starts from (base preset and the file's sections)
    space: Mapping[str, Dist]
    trials: int
    sampler: str
    seed: int
    pruner: str
    emulate: bool
    storage: str                       # database URL of the study
    stages: tuple[str, ...] = field(default=())   # what each trial builds, in pipeline order

    def point(self, trial: Trial) -> dict[str, Any]:
        """Draw a trial's config values: the kind, its architecture, each layer's format, the other keys."""
        sp = self.space
        kind = sp["model.kind"].draw(trial, "model.kind") if "model.kind" in sp else self.values["model.kind"]
        out: dict[str, Any] = {"model.kind": kind}
        if f"{kind}.depth" in sp:
            depth = sp[f"{kind}.depth"].draw(trial, f"{kind}.depth")
            out["model.widths"] = [sp[f"{kind}.widths"].draw(trial, f"{kind}.width{i + 1}") for i in range(depth)]
        if kind == "cnn" and "cnn.channels" in sp:
            out["model.cnn_channels"] = sp["cnn.channels"].draw(trial, "cnn.channels")
        for name, dist in sp.items():
            if name not in ARCH and name not in ("model.kind", "quant.formats"):
                out[name] = dist.draw(trial, name)
        if "quant.formats" in sp:      # one per weight layer, named by the layer (conv1, dw1, dw2, fc1, ...)
            spec = model_spec({**self.values, **out, "quant.formats": ["none"]})
            out["quant.formats"] = [sp["quant.formats"].draw(trial, f"quant.formats.{g['name']}")
                                    for g in spec.geometry()]
        return out

    def trial_config(self, number: int, point: Mapping[str, Any]) -> config.Config:
        """The trial's complete config, written to trial-NNNN.yaml; ConfigError when the point is not a valid
        config (e.g. a cnn on images too small for its convs)."""
        path = self.out / f"trial-{number:04d}.yaml"
        cfg = config.from_values({**self.values, **point}, name=f"{self.name}-trial-{number:04d}", path=str(path))
        self.out.mkdir(parents=True, exist_ok=True)
        write_config(path, cfg.values, f"trial {number} of search {self.path} (rerun: doit cfg={path} firmware)")
        return cfg


def is_search(path: str | Path) -> bool:
    return has_section(path, "search")


def _closest(name: str, names: list[str]) -> str:
    return (difflib.get_close_matches(name, names, n=1, cutoff=0.0) or names)[0]


def _dist(where: str, name: str, raw: Any, check: Any, numeric: str | None) -> Dist:
    """A list of choices, or (numeric: 'int' | 'float') a mapping {low, high, step?, log?}; check(value) is
    None or the problem of one value."""
    if isinstance(raw, list):
        if not raw:
            raise ConfigError(f"{where}: {name}: an empty list (allowed: a non-empty list of values"
                              + (", or {low: L, high: H}" if numeric else "") + ")")
        for v in raw:
            if isinstance(v, (list, dict)):
                raise ConfigError(f"{where}: {name}: {v!r}: each choice must be one value (allowed: a list of "
                                  "numbers, names or booleans)")
            problem = check(v)
            if problem:
                raise ConfigError(f"{where}: {name}: {v!r}: {problem}")
        return Dist(choices=tuple(dict.fromkeys(raw)))
    if isinstance(raw, dict) and numeric:
        bad = sorted(set(raw) - {"low", "high", "step", "log"})
        if bad or not {"low", "high"} <= set(raw):
            raise ConfigError(f"{where}: {name}: {raw!r}: a range needs low and high (allowed keys: low, high, "
                              f"step, log)")
        for end in ("low", "high"):
            problem = check(raw[end])
            if problem:
                raise ConfigError(f"{where}: {name}.{end}: {raw[end]!r}: {problem}")
        step, log = raw.get("step", 1), raw.get("log", False)
        if not isinstance(log, bool) or isinstance(step, bool) or not isinstance(step, int) or step < 1 or \
                (numeric == "float" and "step" in raw):
            raise ConfigError(f"{where}: {name}: step {step!r}, log {log!r} (allowed: step an integer >= 1, for "
                              "integer keys only; log true or false)")
        if raw["low"] > raw["high"] or (log and raw["low"] <= 0):
            raise ConfigError(f"{where}: {name}: low {raw['low']} above high {raw['high']}, or log with low <= 0 "
                              "(allowed: 0 < low <= high with log, low <= high without)")
        return Dist(low=raw["low"], high=raw["high"], step=step, log=log, kind=numeric)
    raise ConfigError(f"{where}: {name}: {raw!r} (allowed: a list of choices"
                      + (", or a range {low: L, high: H, step: S, log: false}" if numeric else "") + ")")


def _key_check(key: str, as_list: bool = False) -> Any:
    def check(v: Any) -> str | None:
        return config.check_value(key, [v] if as_list else v)[1]
    return check


def _space(where: str, raw: Any, values: Mapping[str, Any]) -> dict[str, Dist]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: a mapping of what to search, e.g. {{model.kind: [fc, cnn]}} (allowed names: "
                          f"{', '.join([*ARCH, 'quant.formats'])} and any scalar config key)")
    drawable = [k for k, v in SCHEMA.items() if v.kind in ("int", "float", "bool", "str") and not v.runtime
                and k not in NOT_DRAWN and not k.startswith("import.")]
    names = [*ARCH, "quant.formats", *drawable]
    space: dict[str, Dist] = {}
    for name, dist in raw.items():
        if name in NOT_DRAWN:
            raise ConfigError(f"{where}: {name}: cannot be searched ({NOT_DRAWN[name]})")
        if name in ARCH:
            part = "depth" if name.endswith(".depth") else "width"
            if part == "depth":
                lo, hi = HIDDEN_LAYERS[ARCH[name]]

                def check(v: Any, lo: int = lo, hi: int = hi, kind: str = ARCH[name]) -> str | None:
                    ok = isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
                    return None if ok else f"not a number of hidden layers of a {kind} (allowed: {lo} to {hi})"
            else:
                check = _key_check("model.cnn_channels") if name == "cnn.channels" else \
                    _key_check("model.widths", as_list=True)
            space[name] = _dist(where, name, dist, check, "int")
        elif name == "quant.formats":
            space[name] = _dist(where, name, dist, _key_check(name, as_list=True), None)
            if "none" in space[name].choices:
                raise ConfigError(f"{where}: quant.formats: none (float weights) cannot be deployed, and a search "
                                  "builds the firmware (allowed: integer formats)")
            problems = config.chip_formats({**values, "quant.formats": list(space[name].choices)})
            if problems:             # the config's own rule: a chip without a multiplier takes fewer formats
                raise ConfigError(f"{where}: quant.formats: {problems[0][1]}")
        elif name in drawable:
            kind = SCHEMA[name].kind
            space[name] = _dist(where, name, dist, _key_check(name), kind if kind in ("int", "float") else None)
        else:
            raise ConfigError(f"{where}: {name}: cannot be searched (did you mean {_closest(name, names)}? "
                              "allowed: " + ", ".join([*ARCH, "quant.formats"]) + ", and scalar config keys)")
    kinds = space["model.kind"].choices if "model.kind" in space else (values["model.kind"],)
    for kind in KINDS:
        given = [n for n in (f"{kind}.depth", f"{kind}.widths") if n in space]
        if len(given) == 1:
            other = ({f"{kind}.depth", f"{kind}.widths"} - set(given)).pop()
            raise ConfigError(f"{where}: {given[0]}: needs {other} too (the depth draws how many widths)")
        stray = [n for n in space if ARCH.get(n) == kind]
        if stray and kind not in kinds:
            raise ConfigError(f"{where}: {stray[0]}: no trial is a {kind} (model.kind: {', '.join(kinds)})")
    return space


def _scalar(where: str, spec: Mapping[str, Any], key: str, default: Any, ok: Any, allowed: str) -> Any:
    v = spec.get(key, default)
    if not ok(v):
        raise ConfigError(f"{where}.{key}: {v!r} (allowed: {allowed})")
    return v


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def load(path: str | Path, store_root: Path, stages: Sequence[Stage], storage: str | None = None) -> Search:
    """Validate a search file (storage: a database URL that overrides search.storage, e.g. from the command
    line). stages: the pipeline's stages in order (pipeline.graph.STAGES)."""
    p = Path(path)
    tree = yaml.safe_load(p.read_text()) or {}
    spec = tree.pop("search")
    where = f"{p}: search"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: must be a mapping (allowed keys: {', '.join(SEARCH_KEYS)})")
    for k in spec:
        if k not in SEARCH_KEYS:
            raise ConfigError(f"{where}.{k}: unknown key (did you mean {_closest(k, list(SEARCH_KEYS))}? allowed: "
                              f"{', '.join(SEARCH_KEYS)})")
    base = base_values(spec, where, "trials")
    values = config.from_values({**base, **config.flatten(tree)}, name=p.stem, path=str(p)).values
    if CHIPS[values["mcu.target"]].family != "riscv":   # the fit check builds RISC-V firmware
        raise ConfigError(f"{p}: mcu.target: {values['mcu.target']}: a search runs for the RISC-V chips "
                          f"(allowed: {', '.join(RISCV_NAMES)}); size a Padauk model by hand (docs/padauk.md)")
    if not values["train.val_images"]:
        raise ConfigError(f"{p}: train.val_images: 0, but a search chooses by the validation accuracy and never by "
                          "the test set (allowed: 1 or more held-out images, e.g. 5000)")
    if "trials" not in spec:
        raise ConfigError(f"{where}.trials: missing (how many trials in all, over every worker; e.g. 40)")
    trials = _scalar(where, spec, "trials", None, lambda v: _is_int(v) and 1 <= v <= 100000, "1 to 100000")
    sampler = _scalar(where, spec, "sampler", "tpe", lambda v: v in SAMPLERS, ", ".join(SAMPLERS))
    seed = _scalar(where, spec, "seed", 0, lambda v: _is_int(v) and 0 <= v < 2**31, "0 to 2^31-1")
    pruner = _scalar(where, spec, "pruner", "median" if sampler == "tpe" else "none", lambda v: v in PRUNERS,
                     ", ".join(PRUNERS))
    if sampler == "nsga2" and pruner != "none":
        raise ConfigError(f"{where}.pruner: {pruner}: NSGA-II optimises two objectives (validation accuracy and "
                          "model flash), and Optuna prunes only single-objective studies (allowed: none, or "
                          "sampler: tpe)")
    emulate = _scalar(where, spec, "emulate", False, lambda v: isinstance(v, bool), "true, false")
    out = store_root / "searches" / p.stem
    url = storage or spec.get("storage") or f"sqlite:///{(out / 'study.db').absolute()}"
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"{where}.storage: {url!r}: not a database URL (allowed: null for the SQLite file in the "
                          "store, or e.g. postgresql://user:password@host:5432/bitmcu)")
    space = _space(f"{where}.space", spec.get("space"), values)
    wanted = {"train", "export", "verify", "firmware"} | ({"emulate"} if emulate else set())
    return Search(name=p.stem, path=str(p), out=out, values=values, space=space, trials=trials, sampler=sampler,
                  seed=seed, pruner=pruner, emulate=emulate, storage=url, stages=upstream(wanted, stages))
