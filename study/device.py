"""Where and how fast a point runs: the device, its precision, the CPU threads it uses, and the
launcher, host and scheduler ids it ran under (`placement`, tags of its run).

Defaults by device (documented in study/config.py, TrainerConfig):
- precision `auto`: bf16 autocast on a CUDA GPU that supports bf16 (Ampere and newer), fp32 on
  every CPU. Right before fast: in the oneDNN that torch 2.14.1 bundles, bf16 training on a CPU
  is broken on every x86 kind that runs it natively. On AMX its matmul leaks NaN across rows
  when K % 32 != 0 (oneDNN issue #5717); on AVX-512 BF16 the backward of a convolution gives
  non-finite weight gradients in a few percent of steps, even with oneDNN capped below its
  bf16 kernels (ONEDNN_MAX_CPU_ISA=AVX512_CORE), and never with oneDNN off (then bf16 runs
  several times slower than fp32). `make bench ARGS="--only precision"` counts those steps on
  the machine at hand. Where bf16 is sound it bought 1.09x on the default study. The resolved
  precision is part of the point key; it reads no timing, so it never flips with noise.
- An explicit `trainer.precision=bf16` on a CPU is refused before anything runs, naming why.
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


def cpu_bf16(flags: frozenset[str] | None = None) -> str:
    """What bf16 is on this CPU, by its flags: why a CPU trains in fp32."""
    flags = cpu()[1] if flags is None else flags
    if "amx_bf16" in flags:
        return ("AMX: oneDNN's AMX bf16 matmul in torch 2.14.1 leaks NaN across rows when K % 32 != 0 "
                "(oneDNN issue #5717)")
    if "avx512_bf16" in flags:
        return ("AVX-512 BF16: oneDNN's bf16 convolution backward in torch 2.14.1 gives non-finite weight "
                "gradients in a few percent of steps")
    return "no native bf16: it would be emulated, slower than fp32"


def resolve_precision(name: str, device: torch.device, flags: frozenset[str] | None = None) -> str:
    """`auto` made concrete: bf16 on a CUDA GPU with bf16, fp32 elsewhere. bf16 on a CPU is
    refused (ConfigError), whatever its flags (`cpu_bf16` says why)."""
    if device.type == "cpu" and name == "bf16":
        raise ConfigError(f"trainer.precision=bf16 on a CPU: refused, bf16 training is not sound on this CPU "
                          f"({cpu_bf16(flags)}); use trainer.precision=fp32 or auto (fp32 on CPUs)")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "fp32"


def precision_why(name: str, device: torch.device, flags: frozenset[str] | None = None) -> str:
    """Why the point trains in the precision `name` resolves to (the `precision_reason` tag)."""
    resolved = resolve_precision(name, device, flags)
    if name != "auto":
        return f"trainer.precision={name}"
    if device.type == "cuda":
        return f"auto is {resolved} on this CUDA device" + ("" if resolved == "bf16" else " (no bf16 support)")
    return f"auto is fp32 on every CPU; here: {cpu_bf16(flags)}"


def precision_line(name: str, device: torch.device) -> str:
    """The line a sweep (or a single point) prints about its precision."""
    line = f"precision: {resolve_precision(name, device)} ({precision_why(name, device)})"
    if name == "auto" and device.type == "cpu" and any(f in cpu()[1] for f in NATIVE_BF16):
        line += ("; points recorded in bf16 by an earlier version on this CPU are other points (the precision is "
                 "in the point key): this one trains them again in fp32")
    return line


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
