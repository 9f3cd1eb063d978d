"""bitmcu task graph. Usage: doit [cfg=configs/NAME.yaml] [redo=STAGE[,STAGE]] <tasks>; `doit list` shows them.

The store lives in artifacts/ (or $BITMCU_ARTIFACTS, e.g. shared storage for a cluster).
With a sweep file (cfg=configs/sweep_*.yaml, see pipeline/sweep.py) every stage task becomes a group of
subtasks `<stage>:<run>`, one per run, and `doit sweep` (the default then) builds them all in parallel on
the local cores and writes the Pareto table and plot.

Every stage is built into the content-addressed store (pipeline/store.py) under a key derived from its
code, its declared config keys and its inputs' keys, so it runs only when one of those changed. The
stage tasks are made from the stage declarations (pipeline/stages/); `redo=` throws a stage's entry
away and builds it again, when that stage's task runs.
"""
import difflib
import os
import sys
from pathlib import Path

from doit import doit_cmd, get_var

from contract.errors import UserError
from contract.formats import FORMAT_NAMES
from pipeline import config, search, sweep
from pipeline.graph import STAGES, Plan
from pipeline.store import Store, write_problem

# command-line variables: name -> what it is for (an unknown one is an error, never ignored)
VARIABLES = {"cfg": "the config or sweep file", "redo": "stages to rebuild",
             "port": "monitor: serial port; demo: also offer the board on it", "listen": "demo: the page's port",
             "storage": "search: the study's database URL (overrides search.storage)", "src": "import: checkpoint", "name": "import: config name", "quant": "import: QuantType",
             "widths": "import: FC widths", "cnn_width": "import: CNN channels", "dir": "import: config folder"}


def _fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


for _var in (doit_cmd._CMDLINE_VARS or {}):   # doit keeps the `name=value` arguments there
    if _var not in VARIABLES:
        _close = difflib.get_close_matches(_var, VARIABLES, n=1, cutoff=0.0)[0]
        _fail(f"{_var}={get_var(_var)}: unknown variable (did you mean {_close}=?); allowed: "
              + ", ".join(f"{k} ({v})" for k, v in VARIABLES.items()))

ARTIFACTS = Path(os.environ.get("BITMCU_ARTIFACTS", "artifacts"))
_problem = write_problem(ARTIFACTS)  # doit opens its db there before any task runs
if _problem:
    _fail(_problem)

CFG = get_var("cfg", "configs/default.yaml")
SWEEP = SEARCH = None
try:
    if search.is_search(CFG):   # no plans: each trial's config is made when the study draws it
        SEARCH = search.load(CFG, ARTIFACTS, STAGES, get_var("storage", None))
        PLANS = []
    elif sweep.is_sweep(CFG):
        # parallel runs share the cores: one torch thread each unless the sweep file says otherwise
        SWEEP = sweep.load(CFG, ARTIFACTS / "sweeps", tuple(s.name for s in STAGES))
        PLANS = [Plan.make(c, Store(ARTIFACTS)) for c in SWEEP.runs]
    else:
        PLANS = [Plan.make(config.load(CFG), Store(ARTIFACTS))]
except UserError as e:
    _fail(str(e))

REDO = set(filter(None, get_var("redo", "").split(",")))
_bad = sorted(REDO - {s.name for s in STAGES})
if _bad:       # every name is checked before anything is removed
    _fail(f"redo={','.join(_bad)}: no such stage (allowed: {', '.join(s.name for s in STAGES)})")
for _plan in PLANS:
    _plan.redo = REDO

DOIT_COMMANDS = {"list", "info", "help", "clean", "forget", "ignore", "strace", "dumpdb", "tabcompletion",
                 "reset-dep", "auto"}


def _tasks_asked() -> list[str]:
    """The task names on the command line (or the default ones); none for a doit command such as list."""
    args = [a for a in sys.argv[1:] if "=" not in a and not a.startswith("-") and not a.isdigit()]
    if args and args[0] in DOIT_COMMANDS:
        return []
    return [a.split(":")[0] for a in args if a != "run"] or DOIT_CONFIG["default_tasks"]


def _stages_to_run() -> set[str]:
    """The stages the asked tasks build, their upstream included."""
    names = _tasks_asked()
    wanted = {SWEEP.stage if n == "sweep" and SWEEP else {"flash": "firmware", "demo": "library"}.get(n, n)
              for n in names}
    for s in reversed(STAGES):      # pipeline order is topological: walking back collects every input
        if s.name in wanted:
            wanted.update(s.inputs)
    return wanted


DOIT_CONFIG = {
    "default_tasks": ["search" if SEARCH else "sweep" if SWEEP else STAGES[-1].name],
    "verbosity": 2,
    # Whether a stage is up to date is the store's to say (Plan.up_to_date), so doit's own record is not needed
    # between runs: kept in memory, it cannot lock out a second doit (a sweep's open sqlite transaction did).
    "dep_file": ":memory:",
    "backend": "sqlite3",
}
if SWEEP:
    DOIT_CONFIG["num_process"] = min(len(PLANS), os.cpu_count() or 1)

if SWEEP and {"flash", "monitor", "demo"} & set(_tasks_asked()):
    _fail(f"cfg={CFG} is a sweep; flash, monitor and demo take one config (e.g. one of its runs: "
          f"cfg={ARTIFACTS / 'sweeps' / SWEEP.name / (SWEEP.runs[0].name + '.yaml')})")
if SEARCH and set(_tasks_asked()) - {"search", "gc"}:
    _fail(f"cfg={CFG} is a search file; `doit cfg={CFG} search` runs its trials, and each trial's config "
          f"({SEARCH.out / 'trial-NNNN.yaml'}) builds any stage of that trial")
if "export" in _stages_to_run():   # before any stage runs: a model without an integer form cannot be exported
    for _plan in PLANS:
        if "none" in _plan.cfg["quant.formats"]:
            _fail(f"{_plan.cfg.path}: quant.formats: none (float weights) has no integer form, so the export stage "
                  "and everything after it cannot run; build only `data train`, or choose integer formats "
                  "(allowed: " + ", ".join(f for f in FORMAT_NAMES if f != "none") + ")")


def _stage_task(name):
    """doit task creator of one stage: one task, or with a sweep file one subtask per run."""
    def create():
        if SWEEP is None and SEARCH is None:
            yield PLANS[0].task(name)
        else:
            for plan in PLANS:
                yield plan.task(name, sub=True)
    create.__doc__ = next(s.doc for s in STAGES if s.name == name)
    return create


for _stage in STAGES:
    globals()[f"task_{_stage.name}"] = _stage_task(_stage.name)


def _board_action(fn):
    """A flash/monitor/demo action on the one config: a UserError prints as one line and fails the task."""
    def action():
        from doit.exceptions import TaskFailed
        try:
            fn(PLANS[0])        # a sweep or search never gets here (refused when dodo.py loads)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            return TaskFailed(str(e))
    return action


def task__flash_setup():
    """Probe and flashing tool present? Runs before the firmware is built, so a missing one fails at once."""
    def setup(plan):
        from pipeline.flash import check_setup
        check_setup(plan.cfg["mcu.target"])
    return {"actions": [_board_action(setup)], "uptodate": [False], "verbosity": 2}


def task_flash():
    """Write the firmware to the board: WCH-LinkE (rvprog, minichlink or wlink) or, for Padauk, easypdkprog."""
    def flash(plan):
        from pipeline.flash import flash as write
        print(write(plan.store.path("firmware", plan.keys["firmware"])), end="", flush=True)
    return {"actions": [_board_action(flash)], "task_dep": ["_flash_setup", "firmware"], "uptodate": [False],
            "verbosity": 2}


def task_monitor():
    """Print the board's USART1 lines (USB-serial adapter; port=/dev/ttyX or mcu.port, else the first found)."""
    def monitor(plan):
        from mcu.monitor import find_port
        from mcu.monitor import monitor as show
        show(find_port(get_var("port", None) or plan.cfg["mcu.port"]))
    return {"actions": [_board_action(monitor)], "uptodate": [False], "verbosity": 2}


def task_demo():
    """A local page classifying drawn, uploaded or filmed digits with this run (host library; emulator if
    mcu.mode is serial; the board with port=); listen=N picks the page's port (default 8000)."""
    serial = SWEEP is None and SEARCH is None and PLANS[0].cfg["mcu.mode"] == "serial"

    def demo(plan):
        from pipeline.demo import open_backends, serve
        listen = get_var("listen", "8000")
        if not listen.isdigit() or int(listen) > 65535:
            raise UserError(f"listen={listen}: not a port number (0 to 65535; 0 = a free one)")
        path = plan.store.path
        serve(open_backends(path("library", plan.keys["library"]),
                            path("firmware", plan.keys["firmware"]) if serial else None,
                            get_var("port", None)), int(listen))
    return {"actions": [_board_action(demo)], "task_dep": ["library"] + (["firmware"] if serial else []),
            "uptodate": [False], "verbosity": 2}


def task_import():
    """Turn a BitNetMCU checkpoint into a config: src=PATH.pth [name= quant= widths= cnn_width= dir=]"""
    def action():
        from doit.exceptions import TaskFailed

        from pipeline.bitnetmcu import import_command  # imports torch: only when this task runs
        args = {v: get_var(v, None) for v in ("src", "name", "quant", "widths", "cnn_width")}
        try:
            import_command(**args, folder=get_var("dir", None))
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            return TaskFailed(str(e))
        return None
    return {"actions": [action], "uptodate": [False], "verbosity": 2}


def task_gc():
    """Remove store entries that no run links to (and leftovers of interrupted builds)."""
    def gc():
        removed = Store(ARTIFACTS).gc()
        print(f"removed {len(removed)} entries" + "".join(f"\n  {p}" for p in removed))
    return {"actions": [gc], "uptodate": [False], "verbosity": 2}


def _not_a(kind: str, see: str) -> dict:
    """The task that refuses cfg= when it is not a `kind` file (one line, the task fails)."""
    def refuse():
        print(f"error: cfg={CFG} is not a {kind} file (it has no `{kind}:` section; see {see})", file=sys.stderr)
        return False
    return {"actions": [refuse], "uptodate": [False], "verbosity": 2}


def task_sweep():
    """Build every run of a sweep file (cfg=configs/sweep_*.yaml) in parallel, then its Pareto table and plot."""
    if SWEEP is None:
        return _not_a("sweep", "pipeline/sweep.py and configs/sweep_small.yaml")

    def report():
        rows = sweep.collect(SWEEP, ARTIFACTS)
        files = sweep.write_report(SWEEP, rows, ARTIFACTS / "sweeps" / SWEEP.name)
        print(files[1].read_text() + "".join(f"wrote {f}\n" for f in files), end="")
    return {"actions": [report], "task_dep": [f"{SWEEP.stage}:{p.cfg.name}" for p in PLANS],
            "uptodate": [False], "verbosity": 2}


def task_search():
    """Run a search file's trials (cfg=configs/search_*.yaml; storage=URL: a shared study), then its table."""
    if SEARCH is None:
        return _not_a("search", "docs/search.md and configs/search_tiny.yaml")

    def run():
        from doit.exceptions import TaskFailed

        from pipeline import search_report, search_study   # imports Optuna: only when this task runs
        try:
            search_study.run(SEARCH, Store(ARTIFACTS))
            files = search_report.write(SEARCH, search_study.open_study(SEARCH))
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            return TaskFailed(str(e))
        except KeyboardInterrupt:
            msg = ("interrupted: the trial's point is queued again and its finished stages are stored; the same "
                   "command resumes the search")
            print(f"\n{msg}", file=sys.stderr, flush=True)
            return TaskFailed(msg)
        print(files[1].read_text() + "".join(f"wrote {f}\n" for f in files), end="")
        return None
    return {"actions": [run], "uptodate": [False], "verbosity": 2}
