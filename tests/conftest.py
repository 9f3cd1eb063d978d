"""Shared test setup: hypothesis profiles, what a test needs (markers), and the tiny pipeline.

A test that needs something the machine may lack carries its marker (registered in pyproject.toml):
`mnist`, `riscv`, `chromium`, `cuda`, `sdcc`, `spdk`, `postgres`; a whole file sets `pytestmark`. Each need is detected once
per process (`missing`), and a marked test whose need is missing is skipped with the reason, which says
what is missing and how to get it (`-ra` prints it).
"""
from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import Verbosity, settings

settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True, database=None)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.register_profile("debug", max_examples=1000, deadline=None, verbosity=Verbosity.verbose)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

ROOT = Path(__file__).resolve().parent.parent
SHARED_MNIST = ROOT.parent / "shared" / "datasets" / "mnist"
TINY = ROOT / "configs" / "tiny.yaml"


# ---- needs ---------------------------------------------------------------------------------------------------

def _mnist() -> str | None:
    from pipeline import data

    try:  # the data stage's own search (data.mnist_dir unset): $BITMCU_MNIST_DIR, data/mnist/, ../shared/...
        data.locate(None, ROOT, allow_download=False)
    except data.DataError as e:
        return f"needs MNIST: {e}"
    return None


def _riscv() -> str | None:
    from mcu.build import CC, CROSS

    if shutil.which(CC):
        return None
    return (f"needs {CC} (BITMCU_CROSS prefix {CROSS!r}): apt-get install gcc-riscv64-unknown-elf, or nix develop, "
            f"or set BITMCU_CROSS to the prefix of the RISC-V toolchain on PATH")


def _chromium() -> str | None:
    if shutil.which("chromium"):
        return None
    return "needs chromium (renders the report headless): apt-get install chromium, or nix develop"


def _cuda() -> str | None:
    import torch

    if torch.cuda.is_available():
        return None
    built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
    return (f"needs a CUDA device: torch.cuda.is_available() is False (torch {torch.__version__}, {built}); "
            f"run on a machine with an NVIDIA GPU and its driver")


def _sdcc() -> str | None:
    if shutil.which("sdcc"):
        return None
    return "needs sdcc (the Small Device C Compiler): apt-get install sdcc"


def _spdk() -> str | None:
    from mcu.padauk import tools

    if tools.find_spdk():
        return None
    return f"needs {tools.manual_steps()}"


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's initdb and pg_ctl: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("initdb")
    found = [Path(on_path).parent] if on_path else sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    return next((d for d in found if (d / "initdb").is_file() and (d / "pg_ctl").is_file()), None)


def _postgres() -> str | None:
    if postgres_bin():
        return None
    return ("needs PostgreSQL's initdb and pg_ctl (the search test starts a server of its own): apt-get install "
            "postgresql (./run pytest does it when run as root)")


NEEDS: dict[str, Callable[[], str | None]] = {
    "mnist": _mnist, "riscv": _riscv, "chromium": _chromium, "cuda": _cuda, "sdcc": _sdcc, "spdk": _spdk,
    "postgres": _postgres,
}
FIXTURE_NEEDS = {"mnist_dir": "mnist", "tiny_pipeline": "mnist"}  # a test using the fixture carries the marker
STAGE_NEEDS = {"data": "mnist", "firmware": "riscv"}                # and a stage needs what its inputs need
PADAUK_STAGE_NEEDS = {"data": "mnist", "firmware": "sdcc", "emulate": "spdk"}   # for a Padauk mcu.target


@functools.cache
def missing(need: str) -> str | None:
    """Why this machine lacks what marker `need` stands for (a skip reason), or None if it has it."""
    return NEEDS[need]()


def _needs(item: pytest.Item) -> list[str]:
    return [m.name for m in item.iter_markers() if m.name in NEEDS]


def pytest_collection_modifyitems(config, items):
    for item in items:
        for need in dict.fromkeys(_needs(item)):
            reason = missing(need)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


_current: pytest.Item | None = None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """A test that uses MNIST or builds a stage without its marker fails on every machine, not only where
    the need is missing (where it would fail obscurely instead of skipping)."""
    global _current
    _current = item
    unmarked = sorted({FIXTURE_NEEDS[f] for f in item.fixturenames if f in FIXTURE_NEEDS} - set(_needs(item)))
    if unmarked:
        pytest.fail(f"{item.nodeid} uses fixtures that need {', '.join(unmarked)}: mark it "
                    + ", ".join(f"@pytest.mark.{n}" for n in unmarked), pytrace=False)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """Where the data stage finds MNIST (the test must be marked `mnist`)."""
    from pipeline import data

    return data.locate(None, ROOT, allow_download=False)[0]


# ---- the tiny pipeline ---------------------------------------------------------------------------------------

def entry(plan, stage: str) -> Path:
    """The store folder of one stage of a plan."""
    return plan.store.path(stage, plan.keys[stage])


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """build(upto="report", cfg=None, root=None) -> Plan: the stage `upto` of `cfg` (configs/tiny.yaml by
    default) and every stage it needs, built (or found up to date) in the store at `root`.

    The default store is one per test run, shared by every xdist worker (the store locks each entry while it
    is built, so a stage is built once and the others wait for it): pass a `root` of the test's own where the
    test needs a build of its own. The calling test carries the markers of what the stages need (mnist;
    riscv from the firmware stage on).
    """
    from pipeline import config
    from pipeline.graph import Plan
    from pipeline.store import Store

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # popen-gwN/ of this run -> the run's own folder, common to its workers
    shared = base / "tiny_store"

    def build(upto: str = "report", cfg=None, root: Path | None = None):
        plan = Plan.make(cfg if cfg is not None else config.load(TINY), Store(root or shared))
        stages = plan.upstream(upto)
        from contract.chips import CHIPS
        table = PADAUK_STAGE_NEEDS if CHIPS[plan.cfg["mcu.target"]].family == "padauk" else STAGE_NEEDS
        needs = {table[s] for s in stages if s in table}
        unmarked = sorted(needs - set(_needs(_current))) if _current is not None else []
        if unmarked:
            pytest.fail(f"{_current.nodeid} builds the stage {upto}, which needs {', '.join(unmarked)}: mark it "
                        + ", ".join(f"@pytest.mark.{n}" for n in unmarked), pytrace=False)
        for name in stages:
            if not plan.up_to_date(name):
                failed = plan.run(name)
                assert failed is None, f"stage {name} failed: {failed}"
        return plan

    return build
