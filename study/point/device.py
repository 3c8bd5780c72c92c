"""Where and how fast a point runs: the CPU threads it uses, its `auto` settings made concrete
for the device (precision, sync batch norm), and the launcher, host and scheduler ids it ran
under (`placement`, tags of its run). The machine's own facts are study.settings.hardware.

threads `0`: the cores this process may run on, shared evenly among the jobs that run in
parallel on this machine (Hydra's joblib launcher `n_jobs`), at least one each.
"""
from __future__ import annotations

import os
import socket
from dataclasses import replace

import torch

from study.settings.config import ConfigError, StudyConfig
from study.settings.hardware import resolve_precision, usable_cores


LAUNCHERS = {"BasicLauncher": "basic", "JoblibLauncher": "joblib", "SlurmLauncher": "submitit_slurm",
             "LocalLauncher": "submitit_local", "PackedLauncher": "packed"}


def placement(launcher) -> dict[str, str]:
    """Tags saying how a point ran: the Hydra launcher, the host, processes and nodes, and the
    scheduler's job and array ids (submitit's job environment, else SLURM's variables when a
    point runs inside an allocation)."""
    target = str(launcher.get("_target_", "")) if launcher else ""
    tags = {"launcher": LAUNCHERS.get(target.rsplit(".", 1)[-1], target or "none"), "host": socket.gethostname(),
            "processes": "1", "nodes": "1"}
    try:
        import submitit

        env = submitit.JobEnvironment()  # raises outside a submitit job
        ids = {"job_id": env.job_id, "array_job_id": env.array_job_id, "array_task_id": env.array_task_id}
        return tags | _slurm_tags() | {"scheduler": env.cluster, "processes": str(env.num_tasks),
                                       "nodes": str(env.num_nodes), **{k: str(v) for k, v in ids.items() if v is not None}}
    except Exception:
        pass
    return tags | _slurm_tags()


def _slurm_tags() -> dict[str, str]:
    """The SLURM job's ids, and how often it was requeued (time limit, preemption), when it
    runs inside an allocation."""
    slurm = {"job_id": "SLURM_JOB_ID", "array_job_id": "SLURM_ARRAY_JOB_ID", "array_task_id": "SLURM_ARRAY_TASK_ID"}
    found = {k: os.environ[v] for k, v in slurm.items() if os.environ.get(v)}
    return {"scheduler": "slurm", **found, "restarts": os.environ.get("SLURM_RESTART_COUNT", "0")} if found else {}


def parallel_jobs(launcher) -> int:
    """Jobs that run at once on this machine under a Hydra launcher config: the joblib
    launcher's n_jobs (all cores when -1 or null), the packed launcher's phase's, else 1."""
    target = str(launcher.get("_target_", ""))
    n_jobs = launcher.get("n_jobs", 1) if "joblib" in target or "study_packed" in target else 1
    return n_jobs if n_jobs and n_jobs > 0 else usable_cores()


def take_slot(launcher) -> dict[str, str]:
    """Under the packed launcher on GPUs: this process's slot and GPU (study.point.packing.hold_slot,
    before CUDA starts), as tags of the run; else nothing."""
    slots = launcher.get("slots") if "study_packed" in str(launcher.get("_target_", "")) else None
    if not slots:
        return {}
    from pathlib import Path

    from study.point.packing import hold_slot

    slot, gpu = hold_slot(Path(launcher.slot_dir), list(slots))
    return {"slot": str(slot), "gpu": str(gpu)}


def threads_for(requested: int, cores: int, parallel_jobs: int) -> int:
    """Intra-op threads of one job: as requested, or its share of the cores."""
    return requested if requested > 0 else max(1, cores // max(1, parallel_jobs))


def resolve(study: StudyConfig, device: torch.device) -> StudyConfig:
    """The study with `auto` settings made concrete for this device."""
    t = study.trainer
    precision = resolve_precision(t.precision, device)
    sync = str(t.sync_batchnorm).lower()
    sync = ("true" if device.type == "cuda" else "false") if sync == "auto" else sync
    if t.processes > 1 and sync == "true" and device.type != "cuda":
        raise ConfigError("trainer.sync_batchnorm=true: PyTorch's SyncBatchNorm runs on GPUs only; on CPUs use "
                          "false (batch norm over each process's share) or auto")
    return replace(study, trainer=replace(t, precision=precision, sync_batchnorm=sync))


def configure(study: StudyConfig, parallel_jobs: int = 1) -> int:
    """Set threads and determinism for one point (each training seeds itself); returns the
    thread count."""
    threads = threads_for(study.trainer.threads, usable_cores(), parallel_jobs)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(study.trainer.deterministic, warn_only=True)
    return threads
