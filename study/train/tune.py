"""Optuna 5 tuning of one grid point on its minival split (called directly: the Hydra Optuna
sweeper pins optuna<3).

One study per grid point, named after the point key of its settings without the tuning
block, in Optuna's journal file (safe for parallel workers) or any storage URL. A restarted
study continues: finished trials are kept, trials left RUNNING by a killed process are
marked FAILED, and only the trials still missing are run. Each trial is a run nested under
the point's run; the trial reports val/top1 (minival) every epoch to the pruner. The test
split is never looked at.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from study.settings import grid
from study.settings.config import SearchRange, StudyConfig, TuneConfig, flatten, override, project_root, validate
from study.train.trainer import DivergedError

Train = Callable[[StudyConfig, Any], dict[str, float]]  # (settings, epoch sink) -> final metrics


@dataclass(frozen=True)
class TuneResult:
    study_name: str
    best_trial: int
    best_value: float                 # minival top-1 of the best trial
    best_params: dict[str, float]
    importances: dict[str, float]
    trials: dict[str, int]            # state -> count


def study_name(study: StudyConfig, names: list[str] = ()) -> str:
    """'point-<run key of the untuned point>'; the name a store written before point-key
    version 1 gave it when `names` (the studies in the storage) holds only that one."""
    untuned = replace(study, tune=TuneConfig())
    name, legacy = "point-" + grid.run_key(untuned), grid.legacy_run_key(untuned)
    return "point-" + legacy if legacy and name not in names and "point-" + legacy in names else name


def storage(cfg: TuneConfig) -> optuna.storages.BaseStorage | str:
    if cfg.storage:
        return cfg.storage
    path = Path(project_root(), "optuna", "journal.log")
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def pruner(cfg: TuneConfig) -> optuna.pruners.BasePruner:
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.startup_trials, n_warmup_steps=0)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.NopPruner()


def sample(trial: optuna.Trial, space: dict[str, SearchRange]) -> dict[str, float]:
    return {k: (trial.suggest_int(k, int(r.low), int(r.high), log=r.log) if r.integer
                else trial.suggest_float(k, r.low, r.high, log=r.log)) for k, r in sorted(space.items())}


def apply(study: StudyConfig, values: dict[str, float]) -> StudyConfig:
    """The study with the sampled settings, cast to their types and validated by the schema
    ({'recipe.dropout': 0.2} -> study.recipe.dropout); raises ConfigError."""
    return validate(override(study, values))


def trained_values(study: StudyConfig) -> dict[str, Any]:
    """The values of the tuned settings as the point trains with them (its params)."""
    flat = flatten(study)
    return {k: flat[k] for k in sorted(study.tune.space)}


class _TrialSink:
    """Sends a trial's epochs to its nested run and to the pruner."""

    def __init__(self, run, trial: optuna.Trial) -> None:
        self.run, self.trial = run, trial

    def log_epoch(self, epoch: int, metrics: dict[str, float], timestamp_ms: int | None = None) -> None:
        self.run.log_epoch(epoch, metrics)
        self.trial.report(metrics["val/top1"], epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} (val/top1 {metrics['val/top1']:.4f})")


def tune_point(study: StudyConfig, train: Train, tracker, echo: Callable[[str], None] = print) -> TuneResult:
    """Run the missing trials of the point's study; the best trial's settings and the study."""
    cfg = study.tune
    where = storage(cfg)
    name = study_name(study, optuna.get_all_study_names(where))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = optuna.create_study(study_name=name, storage=where, direction="maximize", load_if_exists=True,
                             sampler=optuna.samplers.TPESampler(seed=cfg.sampler_seed), pruner=pruner(cfg))
    for stale in st.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        st.tell(stale.number, state=TrialState.FAIL)  # left behind by a killed process
    done = len(st.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    for _ in range(max(0, cfg.trials - done)):
        _run_trial(st, study, train, tracker, echo)
    return _result(st, name)


def _run_trial(st: optuna.Study, study: StudyConfig, train: Train, tracker, echo) -> None:
    trial = st.ask()
    settings = apply(study, sample(trial, study.tune.space))
    run = tracker.start_child(f"trial {trial.number}", trained_values(settings),
                              {"optuna.study": st.study_name, "optuna.trial": str(trial.number)})
    try:
        metrics = train(settings, _TrialSink(run, trial))
    except optuna.TrialPruned as e:
        st.tell(trial, state=TrialState.PRUNED)
        run.end("KILLED", reason=str(e))
        echo(f"    trial {trial.number}: {e}")
        return
    except DivergedError as e:
        st.tell(trial, state=TrialState.FAIL)
        run.end("FAILED", reason=f"diverged: {e}")
        echo(f"    trial {trial.number}: diverged")
        return
    except BaseException:
        st.tell(trial, state=TrialState.FAIL)
        run.end("FAILED", reason="interrupted")
        raise
    minival = {k: v for k, v in metrics.items() if not k.startswith(("top", "error"))}  # no test metrics
    st.tell(trial, metrics["minival/top1"])
    run.end("FINISHED", metrics=minival)
    echo(f"    trial {trial.number}: minival top1={metrics['minival/top1']:.4f}")


def _result(st: optuna.Study, name: str) -> TuneResult:
    complete = st.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise RuntimeError(f"study {name}: no trial completed")
    try:
        importances = optuna.importance.get_param_importances(st) if len(complete) >= 2 else {}
    except (RuntimeError, ValueError):
        importances = {}
    counts: dict[str, int] = {}
    for t in st.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    best = st.best_trial
    return TuneResult(name, best.number, float(best.value), dict(best.params),
                      {k: float(v) for k, v in importances.items()}, counts)
