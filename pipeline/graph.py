"""The stage graph: the stages' declarations (pipeline/stages/) in pipeline order, and a plan of store
keys for one config. The declarations import no torch, so building the task list (every `doit` call)
stays fast.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from contract.errors import UserError
from pipeline.config import Config, ConfigError, load
from pipeline.stage import PresetInput, Stage, run_stage, stage_key, upstream
from pipeline.stages import ORDER
from pipeline.stages.report import page
from pipeline.store import Store, StoreError

STAGES: tuple[Stage, ...] = tuple(importlib.import_module(f"pipeline.stages.{n}").STAGE for n in ORDER)


def check_graph(stages: Sequence[Stage]) -> None:
    """Names unique, inputs declared earlier (so pipeline order is a topological order)."""
    seen: set[str] = set()
    for s in stages:
        if s.name in seen:
            raise ValueError(f"stage {s.name} declared twice")
        missing = [i for i in s.inputs if i not in seen]
        if missing:
            raise ValueError(f"stage {s.name}: inputs {missing} are not declared before it")
        seen.add(s.name)


def preset_config(cfg: Config, p: PresetInput, chain: tuple[str, ...] = ()) -> Config:
    """The preset that cfg's key p.key names, as cfg's preset input (ConfigError naming the key otherwise).
    chain: the presets whose inputs led here, which it must not name again."""
    where = f"{cfg.path}: {p.key}: {cfg[p.key]}"
    if not Path(cfg[p.key]).is_file():
        raise ConfigError(f"{where}: no such file (allowed: a preset's YAML file, e.g. configs/default.yaml, or null)")
    target = str(Path(cfg[p.key]).resolve())
    if target in chain:
        raise ConfigError(f"{where}: leads back to itself ({' -> '.join(chain + (target,))}) (allowed: a preset "
                          "that does not name this one, directly or through its own)")
    try:
        sub = load(cfg[p.key])
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    sub = sub.replace(**{k: cfg[k] for k in p.inherit})
    differ = [f"{k} {sub[k]!r} against {cfg[k]!r}" for k in p.same if sub[k] != cfg[k]]
    if differ:
        raise ConfigError(f"{where}: that preset differs in {', '.join(differ)} (allowed: a preset with the same "
                          f"{', '.join(p.same)})")
    return sub


def _show_page(name: str, link: Path) -> None:
    """A stage whose entry is a page to look at (the report) ends its output with where to open it."""
    if name == "report" and page(link).is_file():
        print(f"[{name}] open {page(link).absolute()}", flush=True)


@dataclass
class Plan:
    """Store keys of every stage for one config."""
    cfg: Config
    store: Store
    stages: tuple[Stage, ...]
    keys: dict[str, str]
    redo: set[str] = field(default_factory=set)  # stages whose entry is thrown away and built again
    presets: dict[str, "Plan"] = field(default_factory=dict)  # preset input's key -> that preset's plan

    @classmethod
    def make(cls, cfg: Config, store: Store, stages: Sequence[Stage] = STAGES,
             chain: tuple[str, ...] = ()) -> "Plan":
        check_graph(stages)
        chain = chain + (str(Path(cfg.path).resolve()),)
        plan = cls(cfg, store, tuple(stages), {})
        for s in stages:      # pipeline order: a stage's inputs have their keys before it
            for p in s.preset_inputs:
                if cfg[p.key] is not None:
                    plan.presets[p.key] = cls.make(preset_config(cfg, p, chain), store, stages, chain)
            plan.keys[s.name] = stage_key(s, cfg, plan._inputs(s))
        return plan

    def _inputs(self, s: Stage) -> dict[str, str]:
        return {**{i: self.keys[i] for i in s.inputs},
                **{p.key: self.presets[p.key].keys[p.stage] for p in s.preset_inputs if p.key in self.presets}}

    def upstream(self, name: str) -> tuple[str, ...]:
        """The stage and every stage it needs, in pipeline order."""
        return upstream({name}, self.stages)

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def downstream(self, names: set[str]) -> set[str]:
        """The named stages and every stage that consumes them, directly or not."""
        out = set(names)
        for s in self.stages:
            if out.intersection(s.inputs):
                out.add(s.name)
        return out

    def up_to_date(self, name: str) -> bool:
        if name in self.redo:
            return False
        key = self.keys[name]
        if not self.store.has(name, key):
            return False
        try:
            self.store.verify(name, key)
        except StoreError:
            return False  # the action re-verifies and reports the damage as a clean failure
        _show_page(name, self.store.link(self.cfg.name, name, key))
        return True

    def build(self, name: str, on_epoch: Callable[[int, dict[str, Any]], None] | None = None) -> Path:
        """Build one stage (its inputs must be built) unless its entry is there, link it under the run's name
        and return the link; raises UserError. on_epoch: see pipeline.stage.Context."""
        s = self.stage(name)
        key = self.keys[name]
        if name in self.redo:
            self.store.remove(name, key)
            self.redo.discard(name)      # once: a later task of this run reuses the new entry
        if self.store.has(name, key):
            self.store.verify(name, key, f"doit cfg={self.cfg.path} redo={name} {name}")
        else:
            for p in s.preset_inputs:      # e.g. the teacher: trained first, under its own run name
                if p.key in self.presets:
                    sub = self.presets[p.key]
                    for n in sub.upstream(p.stage):
                        if not sub.up_to_date(n):
                            print(f"[{name}] {p.key}: building {n} of {sub.cfg.path}", flush=True)
                            sub.build(n)
        run_stage(s, self.cfg, key, self._inputs(s), self.store, on_epoch)
        return self.store.link(self.cfg.name, name, key)

    def run(self, name: str) -> Any:
        """doit action: build one stage; a user-facing error becomes a clean failure, not a traceback."""
        from doit.exceptions import TaskFailed

        try:
            link = self.build(name)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            return TaskFailed(str(e))
        except KeyboardInterrupt:
            msg = (f"interrupted: nothing of stage {name} was stored and nothing stored is damaged; the same "
                   "command carries on" + (" from the last finished epoch" if name == "train" else ""))
            print(f"\n{msg}", file=sys.stderr, flush=True)
            return TaskFailed(msg)
        print(f"[{name}] stored {self.store.path(name, self.keys[name])} (linked as {link})", flush=True)
        _show_page(name, link)
        return None

    def task(self, name: str, sub: bool = False) -> dict:
        """doit task dict for one stage; sub=True makes it the subtask `<stage>:<run>` of a sweep."""
        s = self.stage(name)
        task = {
            "doc": s.doc,
            "actions": [(self.run, [name])],
            "uptodate": [lambda: self.up_to_date(name)],
            "task_dep": [f"{i}:{self.cfg.name}" if sub else i for i in s.inputs],
            "verbosity": 2,
        }
        task.update({"name": self.cfg.name} if sub else {"basename": name})
        return task
