"""The stage graph: declarations in pipeline order, and a plan of store keys for one config.

Declarations live here, apart from the stage modules, so that building the task list (every `doit`
call) never imports torch.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pipeline.config import SCHEMA, Config, UserError
from pipeline.spec import TRAIN_KEYS, TRAIN_RUNTIME_KEYS
from pipeline.stage import ROOT, Stage, run_stage, stage_key
from pipeline.store import Store, StoreError

# firmware sources enter the firmware stage's key (mcu/build.py and friends are found by import)
MCU_SOURCES = tuple(sorted(f"mcu/src/{p.name}" for p in (ROOT / "mcu" / "src").iterdir() if p.is_file()))

STAGES: tuple[Stage, ...] = (
    Stage(
        name="data",
        doc="Find and checksum MNIST, downscale it to NxN (PIL's antialiased bilinear), store as uint8 arrays",
        module="pipeline.data",
        keys=("data.image_size",),
        runtime_keys=("data.mnist_dir", "data.allow_download"),
    ),
    Stage(
        name="train",
        doc="Quantization-aware training on the device's integer arithmetic; resumable, deterministic",
        module="pipeline.train",
        keys=(*TRAIN_KEYS, "import.src"),
        runtime_keys=TRAIN_RUNTIME_KEYS,
        inputs=("data",),
        variants=(("import.src", "pipeline.bitnetmcu"),),  # convert a BitNetMCU checkpoint instead
    ),
    Stage(
        name="export",
        doc="Integer model (packed weights, shifts, buffer sizes) as model.json and a generated C header",
        module="pipeline.export",
        keys=("mcu.target",),
        inputs=("train",),
    ),
    Stage(
        name="library",
        doc="Compile the C engine with the exported header into a host shared library (cffi)",
        module="pipeline.library",
        inputs=("export",),
        extra_sources=("engine/bitmcu.c", "engine/bitmcu.h"),
    ),
    Stage(
        name="verify",
        doc="Run PyTorch int-eval, numba and C on every test image; every layer must be identical",
        module="pipeline.verify",
        inputs=("data", "train", "export", "library"),
    ),
    Stage(
        name="firmware",
        doc="Cross-compile the CH32V003/V002 firmware (demo or serial mode); gate flash, RAM and multiplies",
        module="pipeline.firmware",
        keys=("mcu.target", "mcu.mode", "mcu.demo_images", "mcu.kernels", "mcu.segment_pins",
              "mcu.segment_active_low"),
        inputs=("data", "export"),
        extra_sources=(*MCU_SOURCES, "engine/bitmcu.c", "engine/bitmcu.h"),
    ),
    Stage(
        name="emulate",
        doc="Run the firmware in the unicorn CH32V00x emulator: predictions equal the C engine's; cycles per inference",
        module="pipeline.emulate",
        inputs=("data", "export", "library", "firmware"),
    ),
    Stage(
        name="report",
        doc="One self-contained HTML page of the run (report.html + PNG figures): curves, errors, codes, memory",
        module="pipeline.report",
        keys=tuple(k for k, v in SCHEMA.items() if not v.runtime),  # the page shows the whole config
        inputs=("data", "train", "export", "verify", "firmware", "emulate"),
    ),
)


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
    page = link / "report.html"
    if page.is_file():
        print(f"[{name}] open {page.absolute()}", flush=True)


@dataclass
class Plan:
    """Store keys of every stage for one config."""
    cfg: Config
    store: Store
    stages: tuple[Stage, ...]
    keys: dict[str, str]

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
        key = self.keys[name]
        if not self.store.has(name, key):
            return False
        try:
            self.store.verify(name, key)
        except StoreError:
            return False  # the action re-verifies and reports the damage as a clean failure
        _show_page(name, self.store.link(self.cfg.name, name, key))
        return True

    def run(self, name: str) -> Any:
        """doit action: build one stage; a user-facing error becomes a clean failure, not a traceback."""
        from doit.exceptions import TaskFailed

        s = self.stage(name)
        key = self.keys[name]
        try:
            if self.store.has(name, key):
                self.store.verify(name, key, f"doit cfg={self.cfg.path} forget={name} {name}")
            run_stage(s, self.cfg, key, {i: self.keys[i] for i in s.inputs}, self.store)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            return TaskFailed(str(e))
        link = self.store.link(self.cfg.name, name, key)
        print(f"[{name}] stored {self.store.path(name, key)} (linked as {link})", flush=True)
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
