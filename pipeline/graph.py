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
from pipeline.config import Config
from pipeline.stage import Stage, run_stage, stage_key
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

    @classmethod
    def make(cls, cfg: Config, store: Store, stages: Sequence[Stage] = STAGES) -> "Plan":
        check_graph(stages)
        keys: dict[str, str] = {}
        for s in stages:
            keys[s.name] = stage_key(s, cfg, {i: keys[i] for i in s.inputs})
        return cls(cfg, store, tuple(stages), keys)

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
        run_stage(s, self.cfg, key, {i: self.keys[i] for i in s.inputs}, self.store, on_epoch)
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
