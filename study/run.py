"""The Hydra entry point: turns Hydra's job into validated settings and hands each of its
points to the point lifecycle (study.point).

    python -m study.run model.width=0.5 model.depth=26 data.resolution=20 recipe.epochs=8
    python -m study.run -m -cd sweeps -cn default          # a whole sweep (make sweep)
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from study.data import sets
from study.point import device as devices
from study.point.lifecycle import follow_point, run_point
from study.record.redaction import redact, redact_hydra_output
from study.record.access import check_store
from study.record.tracking import mlflow_tracker
from study.settings import config, grid, hardware
from study.settings.config import CODE_ROOT, ConfigError
from study.sweep import handoff, progress
from study.train import distributed

config.register()


@hydra.main(version_base="1.3", config_path=str(CODE_ROOT / "conf"), config_name="config")
def main(cfg: DictConfig) -> list[dict]:
    hc = HydraConfig.get()
    redact_hydra_output(Path(hc.runtime.output_dir, hc.output_subdir or ".hydra"))
    jobs, multirun = devices.parallel_jobs(hc.launcher), hc.mode == RunMode.MULTIRUN
    slot = devices.take_slot(hc.launcher)  # a packed job's GPU, before anything starts CUDA
    try:
        study = config.validate(cfg)
        device = hardware.resolve_device(study.trainer.device)
        precision = hardware.precision_line(study.trainer.precision, device)
        why = {"precision_reason": hardware.precision_why(study.trainer.precision, device)}
        study = devices.resolve(study, device)
        largest = handoff.read_grid(Path(hc.sweep.dir)).get("largest_stored") if multirun else None
        # each of a point's local processes holds its own copy of an in-memory set
        study, data_path = sets.resolve(study, device, jobs * study.trainer.processes, largest)
        world = _world(study, multirun)
        check_store(study.tracking.uri, study.sweep)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if not multirun and world.main:  # a sweep says it once, for all its points (study.sweep)
        print(f"data: {data_path}\n{precision}", flush=True)
    choices = grid.group_choices(list(hc.overrides.task), set(hc.sweeper.get("params") or {}))
    console = progress.Console()
    if jobs > 1 or study.trainer.processes > 1:  # step bars of parallel jobs would draw over each other
        study = dataclasses.replace(study, trainer=dataclasses.replace(study.trainer, progress=False))
    label = console.label(Path(hc.sweep.dir), study.sweep) if multirun else ""
    kwargs = dict(position=_position(), choices=choices, resolved_config=redact(OmegaConf.to_yaml(cfg, resolve=True)),
                  label=label, placement=devices.placement(hc.launcher) | why | slot,
                  parallel_jobs=jobs * (study.trainer.processes // world.nodes if world.size > 1 else 1))
    outcomes = []
    for seed in range(study.seed, study.seed + study.seeds):  # seeds=N: N runs sharing one point key
        one = dataclasses.replace(study, seed=seed)
        own_seed = [f"seed={seed}"] if study.seeds > 1 else []  # one of several seeds names its own
        kwargs["rerun"] = rerun_command(hc.job.config_name, [*hc.overrides.task, *own_seed])
        if study.trainer.processes > 1 and world.size == 1:  # this job starts the point's processes
            outcomes.append(_launched(one, device, kwargs | {"parallel_jobs": jobs * study.trainer.processes}))
        else:
            outcomes.append(point_in_world(one, device, world, kwargs, echo=console.line))
    if not world.main:
        return outcomes
    handoff.write_outcomes(Path(hc.runtime.output_dir), outcomes)
    if multirun:
        console.point_ended(Path(hc.sweep.dir), hc.job.num, study.sweep)
    return outcomes


def rerun_command(config_name: str, overrides: list[str]) -> str:
    """The command that reruns one point of a job as it is: `make point` for a sweep file,
    else study.run itself."""
    last_seed = [o for o in overrides if o.startswith("seed=")][-1:]
    point = " ".join(o for o in overrides if o.split("=")[0] not in ("force", "seeds", "seed") or o in last_seed)
    if config_name == "config":
        return f"python -m study.run force=true {point}".rstrip()
    return f'make point SWEEP={config_name} POINT="{point}"'


def _world(study, multirun: bool) -> distributed.World:
    """The processes this job is one of (torchrun, or a SLURM job's tasks), checked against
    trainer.processes."""
    world = distributed.current()
    p = study.trainer.processes
    if world.size > 1 and world.size != p:
        raise ConfigError(f"trainer.processes={p}: this job is one of {world.size} processes (torchrun "
                          f"--nproc-per-node, or hydra.launcher.tasks_per_node x nodes); set them equal")
    if world.size > 1 and multirun and "SLURM_JOB_ID" not in os.environ:
        raise ConfigError(f"trainer.processes={p} under torchrun trains one point: for a sweep, let each "
                          "point start its processes (make sweep ARGS=\"trainer.processes=N\") or use "
                          "hydra/launcher=slurm with hydra.launcher.tasks_per_node=N")
    return world


def point_in_world(study, device, world: distributed.World, kwargs: dict, echo=print) -> dict:
    """Run one point as this process's part of `world`: rank 0 owns and records it, the others
    follow (study.point)."""
    device = distributed.device_for(device, world)
    with distributed.joined(world, device):
        if not world.main:
            return follow_point(study, device=device, world=world, parallel_jobs=kwargs["parallel_jobs"])
        t = study.tracking
        tracker = mlflow_tracker(t.uri, study.sweep, t.artifact_root, t.retry_s)
        placement = kwargs["placement"] | {"processes": str(world.size), "nodes": str(world.nodes)}
        return run_point(study, tracker=tracker, device=device, echo=echo, world=world,
                         **(kwargs | {"placement": placement}))


def _launched(study, device, kwargs: dict) -> dict:
    """Start the point's trainer.processes local processes (torch.distributed's elastic launcher)
    and return rank 0's outcome; a process that fails ends the others and the point fails."""
    try:
        return distributed.launch(_spawned, (study, device, kwargs), study.trainer.processes)
    except Exception as e:  # ChildFailedError: rank 0 recorded its run (KILLED or FAILED) with the reason
        reason = distributed.failure(e)
        print(f"{grid.display_name(study, kwargs['choices'])}  FAILED: {reason}", flush=True)
        return {"name": grid.display_name(study, kwargs["choices"]), "point_key": grid.point_key(study),
                "status": "FAILED", "reason": reason}


def _spawned(study, device, kwargs: dict) -> dict:
    return point_in_world(study, device, distributed.current(), kwargs)


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
