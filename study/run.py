"""The Hydra entry point: turns Hydra's job into validated settings and hands each of its
points to the point lifecycle (study.point).

    python -m study.run model.width=0.5 model.depth=26 data.resolution=20 recipe.epochs=8
    python -m study.run -m -cd sweeps -cn default          # a whole sweep (make sweep)
"""
from __future__ import annotations

import dataclasses
import sys
from functools import partial
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from study import config, grid, handoff, progress, stream
from study import device as devices
from study.config import ConfigError
from study.point import run_point
from study.redaction import redact, redact_hydra_output
from study.tracking import check_reachable, mlflow_tracker

config.register()


@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parents[1] / "conf"), config_name="config")
def main(cfg: DictConfig) -> list[dict]:
    hc = HydraConfig.get()
    redact_hydra_output(Path(hc.runtime.output_dir, hc.output_subdir or ".hydra"))
    jobs, multirun = devices.parallel_jobs(hc.launcher), hc.mode == RunMode.MULTIRUN
    try:
        study = config.validate(cfg)
        device = devices.resolve_device(study.trainer.device)
        precision = devices.precision_line(study.trainer.precision, device)
        study = devices.resolve(study, device)
        largest = handoff.read_grid(Path(hc.sweep.dir)).get("largest_stored") if multirun else None
        study, data_path = stream.resolve(study, device, jobs, largest)
        check_reachable(study.tracking.uri)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if not multirun:  # a sweep says it once, for all its points (study.sweep)
        print(f"data: {data_path}\n{precision}", flush=True)
    t = study.tracking
    tracker = mlflow_tracker(t.uri, study.sweep, t.artifact_root, t.retry_s)
    choices = grid.group_choices(list(hc.overrides.task), set(hc.sweeper.get("params") or {}))
    console = progress.Console()
    if jobs > 1:  # step bars of parallel jobs would draw over each other
        study = dataclasses.replace(study, trainer=dataclasses.replace(study.trainer, progress=False))
    label = console.label(Path(hc.sweep.dir), study.sweep) if multirun else ""
    point = partial(run_point, tracker=tracker, device=device, position=_position(), choices=choices,
                    parallel_jobs=jobs, resolved_config=redact(OmegaConf.to_yaml(cfg, resolve=True)),
                    echo=console.line, label=label, placement=devices.placement(hc.launcher))
    outcomes = [point(dataclasses.replace(study, seed=seed))  # seeds=N: N runs sharing one point key
                for seed in range(study.seed, study.seed + study.seeds)]
    handoff.write_outcomes(Path(hc.runtime.output_dir), outcomes)
    if multirun:
        console.point_ended(Path(hc.sweep.dir), hc.job.num, study.sweep)
    return outcomes


def _position() -> tuple[int, int]:
    """(1-based index, total) of this job within its sweep; (1, 1) for a single run."""
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return 1, 1
    return hc.job.num + 1, handoff.grid_total(Path(hc.sweep.dir))


if __name__ == "__main__":
    # Run the importable module's main, not __main__'s: parallel launchers (joblib, submitit)
    # pickle the task function by reference and must find it as study.run.main.
    from study import run

    run.main()
