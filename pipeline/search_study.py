"""A search's Optuna study: draw a point, check it fits the chip, build its stages through the store, score it.

Every worker (`doit cfg=<search file> search`, on one machine or several sharing search.storage) runs trials
until the study holds search.trials of them; the study's storage is the only thing the workers share besides
the store. Each trial ends in one of these outcomes (the trial's user attribute `outcome`, the table's state):
  complete    its stages built and the firmware gate passed; value = validation accuracy (train stage's
              val_accuracy_int; nsga2: and the model's flash bytes). The test accuracy is recorded for the
              report only: no decision looks at it.
  pruned      the pruner stopped its training after an epoch (Optuna state PRUNED; nothing is stored for it)
  infeasible  its point is no valid config, or the model does not fit the chip: found before training from the
              firmware gate of the model's shape (pipeline/fit.py), or by the firmware stage after (PRUNED)
  surplus     asked for by a worker when the study was already full; nothing ran (PRUNED, not in the table)
A trial that failed otherwise (interrupted: Ctrl-C, or a worker that died and whose heartbeat stopped) does
not count, and its point is queued again, so the next worker to ask resumes it: its finished stages are in the
store and its training carries on from the last epoch's checkpoint.
"""
from __future__ import annotations

import contextlib
import fcntl
import time
import warnings
from typing import TYPE_CHECKING, Any, Callable

from contract.errors import UserError
from mcu.analysis import FirmwareError
from pipeline import fit
from pipeline.config import Config, ConfigError
from pipeline.graph import Plan
from pipeline.search import Search
from pipeline.stage import summary
from pipeline.stages.train import metrics
from pipeline.store import Store

if TYPE_CHECKING:
    import optuna

OUTCOME, REASON = "outcome", "reason"
COUNTED = ("complete", "pruned", "infeasible")
HEARTBEAT_S, GRACE_S = 60, 600      # a worker silent for GRACE_S (killed, machine lost) has its trial retried


def describe(point: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return "x".join(map(str, v)) if isinstance(v, list) else str(v)
    return ", ".join(f"{k}={fmt(v)}" for k, v in point.items())


def counts(t: "optuna.trial.FrozenTrial") -> bool:
    """Whether a trial takes one of the search's trials: finished with an outcome, or being run or queued."""
    from optuna.trial import TrialState

    return t.state in (TrialState.RUNNING, TrialState.WAITING) or t.user_attrs.get(OUTCOME) in COUNTED


def _sampler(search: Search) -> "optuna.samplers.BaseSampler":
    """A fresh sampler for every trial, seeded by search.seed and the trial's number: one worker's search is
    reproducible, and workers that ask at the same moment draw different points (one shared seed would give
    them the same ones). Both samplers read the history from the storage, so a fresh one loses nothing."""
    import optuna

    if search.sampler == "tpe":   # constant_liar: a point being trained elsewhere counts as a poor one
        def make(seed: int) -> optuna.samplers.BaseSampler:
            return optuna.samplers.TPESampler(seed=seed, constant_liar=True,
                                              n_startup_trials=min(10, max(2, search.trials // 4)))
    else:
        def make(seed: int) -> optuna.samplers.BaseSampler:
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=min(50, max(4, search.trials // 5)))

    class PerTrial(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self.inner = make(search.seed)

        def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            self.inner = make((search.seed * 1_000_003 + trial.number) % 2**32)
            self.inner.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self.inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self.inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self.inner.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values):
            self.inner.after_trial(study, trial, state, values)

    return PerTrial()


@contextlib.contextmanager
def _first_opener(search: Search):
    """Workers creating a fresh SQLite study at the same moment would race creating its tables: one at a time."""
    if not search.storage.startswith("sqlite:"):
        yield
        return
    search.out.mkdir(parents=True, exist_ok=True)
    with open(search.out / ".study.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _pruner(search: Search) -> "optuna.pruners.BasePruner":
    """median: a trial stops after an epoch whose validation accuracy is below the median of the earlier trials'
    at that epoch, once a few trials have finished (never in its first epoch)."""
    import optuna

    if search.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=min(5, max(2, search.trials // 4)), n_warmup_steps=2)


def open_study(search: Search) -> "optuna.Study":
    """The search's study in its storage, created by the first worker; UserError when it cannot be opened."""
    import optuna
    import sqlalchemy.exc

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    directions = ["maximize"] if search.sampler == "tpe" else ["maximize", "minimize"]
    engine = {"connect_args": {"timeout": 120}} if search.storage.startswith("sqlite:") else {"pool_pre_ping": True}
    try:
        with _first_opener(search):
            storage = optuna.storages.RDBStorage(
                search.storage, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None))
            study = optuna.create_study(storage=storage, study_name=search.name, directions=directions,
                                        sampler=_sampler(search), pruner=_pruner(search), load_if_exists=True)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{search.path}: search.storage: cannot open the study at {search.storage} ({first})") \
            from None
    if [d.name.lower() for d in study.directions] != directions:
        raise UserError(f"{search.path}: the study {search.name!r} in {search.storage} optimises "
                        f"{len(study.directions)} objective(s), but search.sampler {search.sampler} optimises "
                        f"{len(directions)}; keep the sampler, or rename the search file (a new study)")
    return study


def run(search: Search, store: Store) -> None:
    """This worker's share: trials until the study holds search.trials of them (none when it already does)."""
    study = open_study(search)

    def full(study: optuna.Study) -> bool:
        return sum(counts(t) for t in study.get_trials(deepcopy=False)) >= search.trials

    def stop_when_full(study: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
        if full(study):
            study.stop()

    if not full(study):
        study.optimize(lambda trial: _objective(search, store, study, trial), callbacks=[stop_when_full])


def _in_budget(study: "optuna.Study", trial: "optuna.Trial", trials: int) -> bool:
    """Numbers are handed out one by one by the storage, so counting the trials numbered before this one
    decides exactly which of several workers asking at once get the last places."""
    before = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number]
    return sum(counts(t) for t in before) < trials


def _objective(search: Search, store: Store, study: "optuna.Study", trial: "optuna.Trial") -> Any:
    import optuna

    if not _in_budget(study, trial, search.trials):
        trial.set_user_attr(OUTCOME, "surplus")
        study.stop()
        raise optuna.TrialPruned("surplus: the study already has its trials")
    try:
        return _trial(search, store, trial)
    except KeyboardInterrupt:     # queue its point again: the next worker to ask resumes it
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        raise


def _end(trial: "optuna.Trial", outcome: str, reason: str) -> None:
    import optuna

    trial.set_user_attr(OUTCOME, outcome)
    trial.set_user_attr(REASON, reason)
    print(f"[search] trial {trial.number}: {outcome}: {reason}", flush=True)
    raise optuna.TrialPruned(reason)


def _trial(search: Search, store: Store, trial: "optuna.Trial") -> Any:
    point = search.point(trial)
    trial.set_user_attr("point", describe(point))
    print(f"[search] trial {trial.number}: {describe(point)}", flush=True)
    try:
        cfg = search.trial_config(trial.number, point)
    except ConfigError as e:
        path = str(search.out / f"trial-{trial.number:04d}.yaml")
        _end(trial, "infeasible", "; ".join(ln.replace(f"{path}: ", "") for ln in str(e).splitlines()))
    trial.set_user_attr("config", cfg.path)
    sizes = fit.model_sizes(cfg)
    trial.set_user_attr("model_flash", sizes["flash_bytes"])
    trial.set_user_attr("model_ram", sizes["ram_bytes"])
    t0 = time.perf_counter()
    reason = fit.misfit(cfg)
    if reason:
        _end(trial, "infeasible", f"before training: {reason}")
    print(f"[search] trial {trial.number}: fits {cfg['mcu.target']} (model flash {sizes['flash_bytes']:,} B, "
          f"buffers {sizes['ram_bytes']:,} B; checked in {time.perf_counter() - t0:.1f} s)", flush=True)
    plan = Plan.make(cfg, store)
    reported: set[int] = set()
    for name in search.stages:
        try:
            plan.build(name, _pruning(search, trial, cfg["train.epochs"], reported) if name == "train" else None)
        except FirmwareError as e:
            if name != "firmware":
                raise
            _end(trial, "infeasible", f"firmware gate: {str(e).splitlines()[0].rstrip(':')}")
        if name == "train" and search.pruner != "none":   # found in the store: its stored curve, for the pruner
            for row in metrics(plan.store.path("train", plan.keys["train"])):
                if row["epoch"] not in reported:
                    trial.report(row["val_acc"], row["epoch"])
    return _score(search, plan, cfg, trial)


def _pruning(search: Search, trial: "optuna.Trial", epochs: int,
             reported: set[int]) -> Callable[[int, dict[str, Any]], None] | None:
    """The train stage's per-epoch callback: report the validation curve (epochs into `reported`), stop when the
    pruner says so."""
    if search.pruner == "none":
        return None

    def on_epoch(epoch: int, row: dict[str, Any]) -> None:
        trial.report(row["val_acc"], epoch)
        reported.add(epoch)
        if epoch < epochs and trial.should_prune():   # after the last epoch there is nothing left to save
            _end(trial, "pruned", f"epoch {epoch}: validation {100 * row['val_acc']:.2f}% below the median of "
                 "earlier trials at that epoch")
    return on_epoch


def _score(search: Search, plan: Plan, cfg: Config, trial: "optuna.Trial") -> Any:
    def figures(stage: str) -> dict[str, Any]:
        return summary(plan.store.path(stage, plan.keys[stage]))

    train, export, firmware = figures("train"), figures("export"), figures("firmware")
    attrs = {"val_accuracy": train["val_accuracy_int"], "test_accuracy": train["test_accuracy_int"],
             "model_flash": export["flash_bytes"], "model_ram": export["peak_ram_bytes"],
             "firmware_flash": firmware["flash_used"], "firmware_ram": firmware["ram_used"],
             "cycles": figures("emulate")["cycles"]["mean"] if search.emulate else None}
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    trial.set_user_attr(OUTCOME, "complete")
    print(f"[search] trial {trial.number}: complete: validation {100 * attrs['val_accuracy']:.2f}%, model flash "
          f"{attrs['model_flash']:,} B, firmware {attrs['firmware_flash']:,} B flash / {attrs['firmware_ram']:,} B "
          f"RAM", flush=True)
    if search.sampler == "tpe":
        return attrs["val_accuracy"]
    return attrs["val_accuracy"], attrs["model_flash"]
