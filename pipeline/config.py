"""Config schema and loader: one table of keys, validated before any work starts.

A preset is a YAML file of sections (`data:`, `model:`, ...) whose leaves are the dotted keys below.
Every problem is reported as `file: key: problem (allowed: ...)`; nothing here raises a traceback
at the user.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml


class UserError(Exception):
    """An error caused by input the user controls; printed as one clean message, never a traceback."""


class ConfigError(UserError):
    pass


@dataclass(frozen=True)
class Key:
    name: str
    kind: str  # int | float | bool | str | path | ints | strs
    default: Any
    doc: str
    choices: tuple | None = None
    lo: float | None = None
    hi: float | None = None
    min_len: int = 1
    max_len: int = 16
    # Runtime keys say where or how to run, never what comes out (the dataset is checksummed,
    # the device only changes speed), so they never enter a store key.
    runtime: bool = False


_KEYS: list[Key] = [
    Key("data.image_size", "int", 16, "input images are downscaled from 28x28 to NxN", lo=8, hi=28),
    Key("data.mnist_dir", "path", None,
        "folder holding the four MNIST idx files (raw or .gz); searched first", runtime=True),
    Key("data.allow_download", "bool", False,
        "download MNIST with torchvision when no local copy is found", runtime=True),
]

SCHEMA: dict[str, Key] = {k.name: k for k in _KEYS}

# Cross-key rules: each takes the full value dict and returns [(key, problem)].
RULES: list[Callable[[Mapping[str, Any]], list[tuple[str, str]]]] = []


@dataclass(frozen=True)
class Config:
    """A validated config: every schema key has a value (preset value or default)."""
    name: str
    path: str
    values: Mapping[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def replace(self, **changes: Any) -> "Config":
        """A copy with dotted keys changed (pass `{'a.b': v}` via **{...}); re-validated."""
        merged = dict(self.values)
        merged.update(changes)
        return from_values(merged, name=self.name, path=self.path)


def _fmt_allowed(key: Key) -> str:
    if key.choices is not None:
        return ", ".join(str(c) for c in key.choices)
    if key.kind == "bool":
        return "true, false"
    if key.kind in ("int", "float", "ints"):
        lo = "-inf" if key.lo is None else key.lo
        hi = "inf" if key.hi is None else key.hi
        what = "integers" if key.kind == "ints" else "an integer" if key.kind == "int" else "a number"
        suffix = f", {key.min_len} to {key.max_len} of them" if key.kind == "ints" else ""
        return f"{what} from {lo} to {hi}{suffix}"
    if key.kind == "path":
        return "a folder path, or null"
    if key.kind == "strs":
        return f"a name or a list of {key.min_len} to {key.max_len} names"
    return "a string"


def _check_scalar(key: Key, v: Any, kind: str) -> tuple[Any, str | None]:
    """Coerce one scalar to the key's type; return (value, problem)."""
    if kind == "bool":
        return (v, None) if isinstance(v, bool) else (v, f"must be true or false; got {v!r}")
    if kind == "int":
        if isinstance(v, bool) or not isinstance(v, int):
            return v, f"must be an integer; got {v!r}"
    elif kind == "float":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return v, f"must be a number; got {v!r}"
        v = float(v)
        if not math.isfinite(v):
            return v, f"must be a finite number; got {v!r}"
    elif kind == "str":
        if not isinstance(v, str):
            return v, f"must be a string; got {v!r}"
    if key.choices is not None and v not in key.choices:
        return v, f"unknown value {v!r}"
    if kind in ("int", "float"):
        if (key.lo is not None and v < key.lo) or (key.hi is not None and v > key.hi):
            return v, f"{v!r} is out of range"
    return v, None


def _check(key: Key, v: Any) -> tuple[Any, str | None]:
    if key.kind == "path":
        if v is None:
            return None, None
        return (str(v), None) if isinstance(v, str) and v else (v, f"must be a folder path or null; got {v!r}")
    if key.kind in ("ints", "strs"):
        if key.kind == "strs" and isinstance(v, str):
            v = [v]
        if not isinstance(v, list):
            return v, f"must be a list; got {v!r}"
        if not key.min_len <= len(v) <= key.max_len:
            return v, f"has {len(v)} entries"
        out = []
        for item in v:
            item, problem = _check_scalar(key, item, "int" if key.kind == "ints" else "str")
            if problem:
                return v, problem
            out.append(item)
        return out, None
    return _check_scalar(key, v, key.kind)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and name not in SCHEMA:
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def _closest(name: str) -> str:
    names = list(SCHEMA)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    if not close:  # a right leaf in the wrong section, e.g. `train.image_size`
        leaf = name.rsplit(".", 1)[-1]
        close = [n for n in names if n.rsplit(".", 1)[-1] == leaf][:1]
    if not close:
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.0)
    return close[0]


def from_values(raw: Mapping[str, Any], name: str = "inline", path: str = "<inline>") -> Config:
    """Validate dotted key -> value pairs (missing keys take defaults); raise ConfigError listing all problems."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    for k, v in raw.items():
        if k not in SCHEMA:
            problems.append(f"{path}: {k}: unknown key (did you mean {_closest(k)}?)")
            continue
        key = SCHEMA[k]
        v, problem = _check(key, v)
        if problem:
            problems.append(f"{path}: {k}: {problem} (allowed: {_fmt_allowed(key)})")
        values[k] = v
    if not problems:
        for key in SCHEMA.values():
            values.setdefault(key.name, key.default)
        for rule in RULES:
            problems += [f"{path}: {k}: {msg}" for k, msg in rule(values)]
    if problems:
        raise ConfigError("\n".join(problems))
    return Config(name=name, path=path, values=values)


def load(path: str | Path) -> Config:
    """Load and validate a preset; its run name is the file's stem."""
    p = Path(path)
    if not p.is_file():
        presets = sorted(x.name for x in Path("configs").glob("*.yaml")) if Path("configs").is_dir() else []
        raise ConfigError(f"{p}: config file not found (presets: {', '.join(presets) or 'none'})")
    try:
        tree = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        raise ConfigError(f"{p}: {where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{p}: top level must be a mapping of sections (allowed: "
                          f"{', '.join(sorted({k.split('.')[0] for k in SCHEMA}))})")
    return from_values(_flatten(tree), name=p.stem, path=str(p))
