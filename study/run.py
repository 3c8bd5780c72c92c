"""The Hydra entry point: trains and records one grid point per job.

    python -m study.run model.width=0.5 model.depth=26 data.resolution=20 recipe.epochs=8
    python -m study.run -m -cd sweeps -cn default          # a whole sweep (make sweep)

It validates the settings, skips a point whose key already has a FINISHED run (unless
force=true), then wires data, model, trainer, measurements and tracker together.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
import traceback
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from study import config, data, faults, grid, measure, models, trainer, tune
from study import device as devices
from study.checkpoint import Checkpoint, CorruptCheckpoint
from study.config import ConfigError, StudyConfig
from study.tracking import Tracker, check_reachable, mlflow_tracker, redact

RESULT_FILE = "result.json"   # one per job in its output folder, read by the sweep summary
GRID_FILE = "grid.json"       # written by the sweep callback: the number of points

config.register()


@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parents[1] / "conf"), config_name="config")
def main(cfg: DictConfig) -> dict:
    try:
        study = config.validate(cfg)
        device = devices.resolve_device(study.trainer.device)
        study = devices.resolve(study, device)
        check_reachable(study.tracking.uri)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    tracker = mlflow_tracker(study.tracking.uri, study.sweep, study.tracking.artifact_root)
    hc = HydraConfig.get()
    choices = grid.group_choices(list(hc.overrides.task), set(hc.sweeper.get("params") or {}))
    point = partial(run_point, tracker=tracker, device=device, position=_position(), choices=choices,
                    parallel_jobs=_parallel_jobs(), resolved_config=redact(OmegaConf.to_yaml(cfg, resolve=True)))
    outcomes = [point(dataclasses.replace(study, seed=seed))  # seeds=N: N runs sharing one point key
                for seed in range(study.seed, study.seed + study.seeds)]
    Path(hc.runtime.output_dir, RESULT_FILE).write_text(json.dumps(outcomes))
    return outcomes


def run_point(study: StudyConfig, *, tracker: Tracker, device: torch.device,
              position: tuple[int, int] = (1, 1), parallel_jobs: int = 1, resolved_config: str = "",
              choices: list[str] = (), echo: Callable[[str], None] = print) -> dict:
    """Train, measure and record one validated grid point (its `auto` settings resolved by
    study.device.resolve); returns its outcome."""
    start = time.perf_counter()
    key, run_key, name = grid.point_key(study), grid.run_key(study), grid.display_name(study, choices)
    prefix = f"[{position[0]}/{position[1]}] {name}"
    outcome = {"name": name, "point_key": key}
    ckpt = Checkpoint(checkpoint_path(run_key)) if study.trainer.checkpoints else None
    if not study.force and (run_id := tracker.finished_run(run_key)):
        if ckpt and not study.trainer.keep_checkpoints:
            ckpt.remove()  # left by a process killed between finishing and cleaning up
        echo(f"{prefix}  skipped: finished as run {run_id[:8]}")
        return outcome | {"status": "SKIPPED", "run_id": run_id, "seconds": time.perf_counter() - start}

    threads = devices.configure(study, parallel_jobs)
    ds = data.prepare(study.data)
    memory_format = torch.channels_last if study.trainer.channels_last else torch.contiguous_format
    tuned_keys = set(study.tune.space) if study.tune.trials else set()
    params = {k: v for k, v in grid.semantic_settings(study).items() if k not in tuned_keys} | ds.sizes() | \
        {"point_key": key}
    resume = _resumable(ckpt, tracker, run_key, prefix, echo)
    if resume:
        run_id = resume["run_id"]
        echo(f"{prefix}  resuming run {run_id[:8]} after epoch {resume['epoch']}")
    elif run_id := tracker.adopt_orphan(run_key):
        echo(f"{prefix}  restarting run {run_id[:8]} (interrupted before its first checkpoint)")
    else:
        run_id = tracker.start_point(name, params, {"point_key": key, "run_key": run_key, "git_sha": git_sha(),
                                                    "device": str(device), "threads": str(threads)})
    train = partial(_train, ds=ds, device=device, memory_format=memory_format)
    artifacts = {"config.yaml": resolved_config}
    try:
        if tuned_keys:
            study, params, artifacts["tuning.json"] = _tune(study, train, tracker, echo, params)
        measure.reset_peak_memory(device)
        model, fitted = train(study, sink=tracker, checkpoint=ckpt, resume=resume, run_id=run_id)
        metrics = fitted.metrics | measure.peak_memory_mb(device) | \
            measure.complexity(model, ds.resolution, ds.in_chans) | _latency(model, ds, study, memory_format)
        metrics["point_time_s"] = time.perf_counter() - start
        metrics["point_fixed_s"] = metrics["point_time_s"] - fitted.loop_time_s  # all but the epochs
        tracker.finish_point(metrics, artifacts | {"record.json": {"params": params, "metrics": metrics,
                                                                   "epochs": fitted.epoch_history}})
        if ckpt and not study.trainer.keep_checkpoints:
            ckpt.remove()
    except Exception as e:  # the point fails; the sweep goes on (an interrupt still stops it)
        reason = failure_reason(e)
        tracker.fail_point(reason)
        if ckpt:
            ckpt.remove()  # a failed point is retried from scratch
        echo(f"{prefix}  FAILED: {reason}")
        if not isinstance(e, (trainer.DivergedError, torch.OutOfMemoryError, MemoryError)):
            traceback.print_exc()
        return outcome | {"status": "FAILED", "run_id": run_id, "reason": reason,
                          "seconds": time.perf_counter() - start}
    except BaseException as e:  # interrupted: the checkpoint stays, a rerun resumes
        tracker.fail_point(f"interrupted: {type(e).__name__}", status="KILLED")
        raise
    seconds = time.perf_counter() - start
    echo(f"{prefix}  top1={metrics['top1']:.3f}  {seconds:.1f}s")
    return outcome | {"status": "FINISHED", "run_id": run_id, "seconds": seconds,
                      **{k: metrics[k] for k in ("top1", "flops", "params", "latency_ms", "train_img_per_s")}}


def checkpoint_path(run_key: str) -> Path:
    return Path(config.project_root(), "checkpoints", f"{run_key}.pt")


def _resumable(ckpt: Checkpoint | None, tracker: Tracker, key: str, prefix: str, echo) -> dict | None:
    """The saved state of this point's interrupted run, if it is sound and its run can go on."""
    if ckpt is None:
        return None
    try:
        state = ckpt.load()
    except CorruptCheckpoint as e:
        echo(f"{prefix}  checkpoint corrupt, restarting the point from scratch: {e}")
        ckpt.remove()
        return None
    if state is None:
        return None
    if not tracker.resume_point(state["run_id"], key):
        echo(f"{prefix}  checkpoint of run {state['run_id'][:8]} cannot be resumed there; restarting")
        ckpt.remove()
        return None
    return state


def failure_reason(e: BaseException) -> str:
    """The `status_reason` tag of a failed point: what happened, in one line."""
    if isinstance(e, trainer.DivergedError):
        return f"diverged: {e}"
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return f"out of memory: {e}"
    return f"error: {type(e).__name__}: {e}"


def _train(study: StudyConfig, *, ds: data.Dataset, device: torch.device, memory_format, sink,
           evaluate_test: bool = True, **resume) -> tuple[torch.nn.Module, trainer.FitResult]:
    """Build and fit the point's model; `resume` passes checkpoint, resume and run_id on."""
    torch.manual_seed(study.seed)
    model = _build(study, ds).to(device, memory_format=memory_format)
    if fault := faults.planned(grid.display_name(study)):
        faults.inject(model, fault)
    r = study.recipe
    batcher = data.Batcher(ds, device=device, augment=study.data.augment, crop_padding=study.data.crop_padding,
                           memory_format=memory_format, randaugment=(r.randaugment_ops, r.randaugment_magnitude))
    fitted = trainer.fit(trainer.compiled(model, study.trainer.compile), ds, batcher, study.recipe,
                         study.trainer, seed=study.seed, sink=sink, device=device, evaluate_test=evaluate_test,
                         **resume)
    return model, fitted


def _tune(study: StudyConfig, train, tracker: Tracker, echo, params: dict) -> tuple[StudyConfig, dict, dict]:
    """Tune on minival (trials nested under the point run), then return the study with the
    best trial's settings (logged as the point's params, with the study's tags), the params,
    and the tuning report (the `tuning.json` artifact)."""
    trial_metrics = lambda s, sink: train(s, sink=sink, evaluate_test=False)[1].metrics  # noqa: E731
    result = tune.tune_point(study, trial_metrics, tracker, echo)
    tracker.annotate(result.best_params, {"tuned": "true", "optuna.study": result.study_name,
                                          "optuna.best_trial": str(result.best_trial),
                                          "optuna.best_minival_top1": f"{result.best_value:.6f}",
                                          "optuna.importances": json.dumps(result.importances),
                                          "optuna.trials": json.dumps(result.trials)})
    echo(f"    best trial {result.best_trial}: minival top1={result.best_value:.4f} "
         f"{result.best_params}; importances {result.importances}")
    return tune.apply(study, result.best_params), params | result.best_params, dataclasses.asdict(result)


def _build(study: StudyConfig, ds: data.Dataset) -> torch.nn.Module:
    m, r = study.model, study.recipe
    return models.build_model(m.depth, m.width, num_classes=ds.num_classes, in_chans=ds.in_chans,
                              se=m.se, se_ratio=m.se_ratio, resnet_d=m.resnet_d, dropout=r.dropout,
                              stochastic_depth=r.stochastic_depth, stochastic_depth_rule=r.stochastic_depth_rule)


def _latency(model, ds, study: StudyConfig, memory_format) -> dict[str, float]:
    t = study.trainer
    return measure.inference_latency(
        model, ds.resolution, ds.in_chans, batch_size=t.latency_batch_size, repeats=t.latency_repeats,
        memory_format=memory_format, autocast_dtype=torch.bfloat16 if t.precision == "bf16" else None)


def _position() -> tuple[int, int]:
    """(1-based index, total) of this job within its sweep; (1, 1) for a single run."""
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return 1, 1
    grid_file = Path(hc.sweep.dir, GRID_FILE)
    total = json.loads(grid_file.read_text())["total"] if grid_file.exists() else 0
    return hc.job.num + 1, total


def _parallel_jobs() -> int:
    """Jobs that run at once on this machine: the joblib launcher's n_jobs, else 1."""
    launcher = HydraConfig.get().launcher
    n_jobs = launcher.get("n_jobs", 1) if "joblib" in str(launcher.get("_target_", "")) else 1
    return n_jobs if n_jobs and n_jobs > 0 else devices.usable_cores()


@lru_cache(maxsize=1)
def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=config.project_root())
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


if __name__ == "__main__":
    # Run the importable module's main, not __main__'s: parallel launchers (joblib, submitit)
    # pickle the task function by reference and must find it as study.run.main.
    from study import run

    run.main()
