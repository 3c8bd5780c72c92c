"""Where and how fast a point runs: the device, its precision, the CPU threads it uses, and the
launcher, host and scheduler ids it ran under (`placement`, tags of its run).

Defaults by device (documented in study/config.py, TrainerConfig):
- precision `auto`: bf16 autocast on a CUDA GPU that supports bf16 (Ampere and newer) and on
  an x86 CPU with native bf16 instructions (the `avx512_bf16` or `amx_bf16` flag), fp32
  elsewhere: on a CPU without them bf16 is emulated and slower than fp32. It reads the CPU's
  flags, not a timing, because the resolved precision is part of the point key (it can change
  accuracy) and must not flip with a noisy measurement.
- threads `0`: the cores this process may run on, shared evenly among the jobs that run in
  parallel on this machine (Hydra's joblib launcher `n_jobs`), at least one each.
"""
from __future__ import annotations

import os
import socket
from dataclasses import replace
from functools import cache
from pathlib import Path

import torch

from study.config import ConfigError, StudyConfig


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device='cuda': no CUDA device is available; use auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


NATIVE_BF16 = ("avx512_bf16", "amx_bf16")  # x86 flags of hardware bf16 dot products


@cache
def cpu() -> tuple[str, frozenset[str]]:
    """The CPU's model name and ISA flags (/proc/cpuinfo; unknown and none elsewhere)."""
    model, flags = "unknown", frozenset()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, flags


def resolve_precision(name: str, device: torch.device, flags: frozenset[str] | None = None) -> str:
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    flags = cpu()[1] if flags is None else flags
    return "bf16" if device.type == "cpu" and any(f in flags for f in NATIVE_BF16) else "fp32"


def precision_line(name: str, device: torch.device) -> str:
    """The line a sweep (or a single point) prints about its precision."""
    resolved = resolve_precision(name, device)
    if name != "auto":
        return f"precision: {resolved} (trainer.precision={name})"
    if device.type != "cpu":
        return f"precision: auto is {resolved} on this {device.type} device"
    if resolved == "fp32":
        return "precision: auto is fp32 on this CPU (no native bf16)"
    flags = ", ".join(f for f in NATIVE_BF16 if f in cpu()[1])
    return (f"precision: auto is bf16 on this CPU ({flags}); the precision is part of the point key, so points "
            "recorded in fp32 (on a CPU without native bf16, or before auto read the CPU) are other points: "
            "trainer.precision=fp32 continues them")


LAUNCHERS = {"BasicLauncher": "basic", "JoblibLauncher": "joblib", "SlurmLauncher": "submitit_slurm",
             "LocalLauncher": "submitit_local"}


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


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parallel_jobs(launcher) -> int:
    """Jobs that run at once on this machine under a Hydra launcher config: the joblib
    launcher's n_jobs (all cores when -1 or null), else 1."""
    n_jobs = launcher.get("n_jobs", 1) if "joblib" in str(launcher.get("_target_", "")) else 1
    return n_jobs if n_jobs and n_jobs > 0 else usable_cores()


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
