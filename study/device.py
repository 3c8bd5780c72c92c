"""Where and how fast a point runs: the device, its precision, and the CPU threads it uses.

Defaults by device (documented in study/config.py, TrainerConfig):
- precision `auto`: bf16 autocast on a CUDA GPU that supports bf16 (Ampere and newer), fp32
  elsewhere. A CPU's bf16 speed depends on native bf16 instructions (AVX512-BF16, AMX), so
  on a CPU bf16 is asked for explicitly. The resolved precision is part of the point key,
  since it can change accuracy.
- threads `0`: the cores this process may run on, shared evenly among the jobs that run in
  parallel on this machine (Hydra's joblib launcher `n_jobs`), at least one each.
"""
from __future__ import annotations

import os
from dataclasses import replace

import torch

from study.config import ConfigError, StudyConfig


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device='cuda': no CUDA device is available; use auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    if name != "auto":
        return name
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


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
    precision = resolve_precision(study.trainer.precision, device)
    return replace(study, trainer=replace(study.trainer, precision=precision))


def configure(study: StudyConfig, parallel_jobs: int = 1) -> int:
    """Set threads and determinism for one point (each training seeds itself); returns the
    thread count."""
    threads = threads_for(study.trainer.threads, usable_cores(), parallel_jobs)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(study.trainer.deterministic, warn_only=True)
    return threads
