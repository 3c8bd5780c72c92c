"""The launcher `hydra/launcher=packed` (make sweep JOBS=auto, PACK=N; make decide JOBS=auto):
the sweep's points trained as the packing plan says (study.point.packing), in phases, each
through joblib's loky processes and Hydra's own job runner, as the joblib launcher does.

- On CPU cores: small points side by side, one thread each (one job per core, or PACK=N at once),
  then any point too large to gain from it alone on all cores.
- On GPUs: every job of the packed phase takes a slot (its GPU) for its process's life, then the
  points that need a GPU to themselves run one per GPU; a point that fits no GPU is refused
  (exit 2) before anything trains.

Within a phase the points with the most compute go first, so the last ones to start are short;
each job keeps its number in the sweep (its output folder and its place in the progress bar).
Each phase's jobs read how many run at once (their threads) and their slots from the launcher's
settings, which the phase sets. Hydra accepts launchers only from classes defined in the
hydra_plugins package: hydra_plugins/study_packed holds the class, which calls `launch`.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn
from omegaconf import DictConfig, open_dict


def launch(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    """The packed launcher's `launch` (hydra_plugins/study_packed): plan, then each phase's jobs."""
    from hydra_plugins.hydra_joblib_launcher._core import execute_job
    from joblib import Parallel, delayed
    from joblib.externals.loky import get_reusable_executor

    from study.settings.config import ConfigError
    from study.sweep.compose import validate_grid

    studies = validate_grid(launcher.config, [list(o) for o in job_overrides])
    try:
        phases, lines = plan(launcher.pack, studies)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print("\n".join(lines), flush=True)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    done: dict[int, JobReturn] = {}
    for k, phase in enumerate(phases):
        cfg = phase_config(launcher.config, phase, sweep_dir / "slots" / f"phase-{initial_job_idx}-{k}")
        runs = Parallel(n_jobs=phase.jobs, backend="loky", batch_size=1, pre_dispatch="n_jobs")(
            delayed(execute_job)(initial_job_idx + i, job_overrides[i], launcher.hydra_context, cfg,
                                 launcher.task_function, Singleton.get_state())
            for i in phase.points)
        done.update(zip(phase.points, runs))
        if phase.slots:  # a worker keeps its GPU for life: the next phase's slots need new ones
            get_reusable_executor().shutdown(wait=True)
    return [done[i] for i in range(len(job_overrides))]


def plan(pack, studies: list) -> tuple[list, list[str]]:
    """The phases of `studies` on this machine's GPUs (or STUDY_FAKE_GPUS), else on its cores,
    and the lines that say so."""
    from study.point import packing
    from study.settings.grid import display_name
    from study.settings.hardware import usable_cores
    from study.sweep import progress

    names = [f"#{i + 1} {display_name(s)}" for i, s in enumerate(studies)]  # unique, as a plan's keys
    weights = [progress.weight(s) for s in studies]
    costs = [progress.complexity_of(s) for s in studies]
    cores = usable_cores()
    if gpus := packing.visible_gpus():
        peaks = {n: packing.estimate_peak_mb(c["params"], c["activations"], s.recipe.batch_size,
                                             "fp32" if s.trainer.precision == "fp32" else "bf16")
                 for n, c, s in zip(names, costs, studies)}
        p = packing.plan(pack, peaks, gpus)
        phases = packing.gpu_phases(p, names, weights, gpus)
    else:
        steps = [3 * c["flops"] * s.recipe.batch_size for c, s in zip(costs, studies)]
        phases = packing.cpu_phases(pack, steps, weights, cores)
    return phases, packing.phase_lines(phases, names, cores)


def phase_config(config: DictConfig, phase, slot_dir: Path) -> DictConfig:
    """The sweep's config as a phase's jobs see it: how many run at once, and their slots, as
    Hydra overrides (Hydra composes each job's config again from them)."""
    cfg = copy.deepcopy(config)
    slots = [f"hydra.launcher.slots=[{','.join(map(str, phase.slots))}]", f"hydra.launcher.slot_dir={slot_dir}"]
    with open_dict(cfg):
        cfg.hydra.overrides.hydra = [*cfg.hydra.overrides.hydra, f"hydra.launcher.n_jobs={phase.jobs}",
                                     *(slots if phase.slots else [])]
    return cfg
