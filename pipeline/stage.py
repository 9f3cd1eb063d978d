"""Stages: what each one reads, how its store key is derived, and how it is run.

A stage's key hashes its name, its code (its module plus every project module that module imports,
found by reading the imports, so a helper edited in one place changes the key of every stage using
it), the canonical values of the config keys it declares (a `path` key's value is its file's sha256,
so editing the file rebuilds and moving it does not; a key left at null is left out, so adding an
optional key keeps every existing entry) and the keys of its inputs. Keys are known before anything
runs, so "is it up to date?" is one directory lookup. A stage may have variants: another module
implements it when a config key is set (the train stage imports a BitNetMCU checkpoint instead of
training), and then that module's code enters the key.
"""
from __future__ import annotations

import ast
import fnmatch
import hashlib
import importlib
import json
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pipeline.config import SCHEMA, Config, ConfigError
from pipeline.store import SUMMARY, Store, file_sha256

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("contract", "refimpl", "engine", "mcu", "pipeline")
# Infrastructure: how entries are stored and configs parsed, not what a stage computes.
INFRA = frozenset({"pipeline.stage", "pipeline.store", "pipeline.config", "pipeline.graph"})


@dataclass(frozen=True)
class PresetInput:
    """A config key naming another preset whose entry of `stage` is an input (the train stage's teacher).

    That preset is planned with this config's values of `inherit` (how to run it, so that its entry is the
    one a sweep of this config would build), and must agree with it on `same`."""
    key: str
    stage: str
    inherit: tuple[str, ...] = ()
    same: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stage:
    name: str
    doc: str  # first line is what `doit list` shows
    module: str  # implements run(ctx) -> summary dict; imported only when the stage runs
    keys: tuple[str, ...] = ()  # config keys that change the output
    runtime_keys: tuple[str, ...] = ()  # config keys it may read that never change the output
    inputs: tuple[str, ...] = ()  # upstream stage names
    outputs: tuple[str, ...] = ()  # the files it writes (fnmatch patterns; a plain name must be written)
    extra_sources: tuple[str, ...] = ()  # non-Python files (C sources, linker scripts), relative to ROOT
    variants: tuple[tuple[str, str], ...] = ()  # (config key, module): that module runs it when the key is set
    preset_inputs: tuple[PresetInput, ...] = ()  # inputs named by the key, under its name, when it is set

    def module_for(self, cfg: Config) -> str:
        return next((m for k, m in self.variants if cfg[k] is not None), self.module)

    def check_outputs(self, files: list[str]) -> None:
        """Raise unless the entry's files are what the stage declares (a programming error otherwise)."""
        stray = [f for f in files if not any(fnmatch.fnmatch(f, p) for p in self.outputs)]
        missing = [p for p in self.outputs if not any(c in p for c in "*?[") and p not in files]
        if stray or missing:
            raise RuntimeError(f"stage {self.name}: wrote undeclared files {stray} / did not write {missing}; "
                               f"it declares outputs {list(self.outputs)}")


def summary(entry: Path) -> dict[str, Any]:
    """Any stage entry's summary.json (its headline figures, key, config and inputs' keys)."""
    return json.loads((entry / SUMMARY).read_text())


def _module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _project_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found.update(n for n in names if n.split(".")[0] in PACKAGES and _module_file(n))
    return found


@lru_cache(maxsize=None)
def source_files(module: str) -> tuple[Path, ...]:
    """The module's file and, transitively, every project module it imports (infrastructure excluded)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        if m in seen or m in INFRA:
            continue
        seen.add(m)
        f = _module_file(m)
        if f is None:
            raise ConfigError(f"stage module {m}: no such file under {ROOT}")
        todo.extend(_project_imports(f))
    return tuple(sorted({_module_file(m) for m in seen}))


def code_hash(stage: Stage, module: str | None = None) -> str:
    h = hashlib.sha256()
    declaration = f"pipeline.stages.{stage.name}"   # its readers and declared outputs
    files = {*source_files(module or stage.module), *(ROOT / s for s in stage.extra_sources),
             *(source_files(declaration) if _module_file(declaration) else ())}
    for f in sorted(files):
        h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def key_value(cfg: Config, key: str) -> Any:
    """A config value as it enters a stage key: a `path` key stands for its file's content, a key whose
    meaning depends on the machine for what it means here (Key.resolve)."""
    v = cfg.resolved(key)
    if v is None or SCHEMA[key].kind != "path":
        return v
    p = Path(v)
    if not p.is_file():
        raise ConfigError(f"{cfg.path}: {key}: {v}: no such file (allowed: an existing file, or null)")
    return {"sha256": file_sha256(p)}


def upstream(wanted: set[str], stages: Sequence[Stage]) -> tuple[str, ...]:
    """The wanted stages and everything they read, in pipeline order."""
    want = set(wanted)
    for s in reversed(stages):       # pipeline order is topological: walking back collects every input
        if s.name in want:
            want.update(s.inputs)
    return tuple(s.name for s in stages if s.name in want)


def stage_key(stage: Stage, cfg: Config, input_keys: Mapping[str, str]) -> str:
    payload = {
        "stage": stage.name,
        "code": code_hash(stage, stage.module_for(cfg)),
        "keys": {k: key_value(cfg, k) for k in stage.keys if cfg[k] is not None
                 and (SCHEMA[k].only_with is None or cfg[SCHEMA[k].only_with] is not None)},
        "inputs": dict(sorted(input_keys.items())),
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class StageConfig(Mapping[str, Any]):
    """The config as one stage may see it: reading an undeclared key is a programming error."""

    def __init__(self, stage: Stage, cfg: Config):
        self._stage = stage
        self._allowed = set(stage.keys) | set(stage.runtime_keys)
        self._cfg = cfg

    def __getitem__(self, key: str) -> Any:
        if key not in self._allowed:
            raise KeyError(f"stage {self._stage.name} reads {key!r} but does not declare it")
        return self._cfg[key]

    def resolved(self, key: str) -> Any:
        """The value as this machine runs it (Config.resolved), for a declared key."""
        self[key]                        # an undeclared key raises here, as for plain reads
        return self._cfg.resolved(key)

    def __iter__(self):
        return iter(sorted(self._allowed))

    def __len__(self) -> int:
        return len(self._allowed)


@dataclass
class Context:
    stage: Stage
    cfg: StageConfig
    key: str  # this entry's store key
    out: Path  # write outputs here (a temporary folder, published atomically)
    work: Path  # scratch that survives a crash, for resumable stages
    inputs: dict[str, Path]  # upstream stage (or preset input's key) -> verified entry folder
    input_keys: dict[str, str]  # the same -> its store key
    # Called by a stage with a learning curve (train) after each epoch with (epoch, that epoch's metrics row).
    # It never changes what is stored: it may only watch, or raise to abandon the build (a search's pruner),
    # which leaves no entry. Not part of the store key.
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None

    def input(self, name: str) -> Path:
        return self.inputs[name]

    def log(self, msg: str) -> None:
        print(f"[{self.stage.name}] {msg}", flush=True)


def run_stage(stage: Stage, cfg: Config, key: str, input_keys: Mapping[str, str], store: Store,
              on_epoch: Callable[[int, dict[str, Any]], None] | None = None) -> Path:
    """Verify the inputs, then build the entry (unless present) and return its folder (on_epoch: Context's)."""
    stage_of = {p.key: p.stage for p in stage.preset_inputs}
    inputs = {name: store.verify(stage_of[name], k) if name in stage_of   # another preset's: delete and rerun
              else store.verify(name, k, f"doit cfg={cfg.path} redo={name} {name}")
              for name, k in input_keys.items()}

    def build(out: Path, work: Path) -> dict:
        t0 = time.perf_counter()
        mod = importlib.import_module(stage.module_for(cfg))
        ctx = Context(stage, StageConfig(stage, cfg), key, out, work, inputs, dict(input_keys), on_epoch)
        figures = dict(mod.run(ctx))
        stage.check_outputs(sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()))
        figures.setdefault("stage", stage.name)
        figures["key"] = key
        figures["config"] = {k: cfg[k] for k in stage.keys}
        figures["inputs"] = dict(input_keys)
        figures["seconds"] = round(time.perf_counter() - t0, 3)
        return figures

    return store.build(stage.name, key, build)
