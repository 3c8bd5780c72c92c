"""What this machine offers and what precision it trains in: the device a name resolves to, the
CPU's model and ISA flags, the cores this process may use, and `trainer.precision` made
concrete (`auto`) or refused (bf16 on a CPU), with the reason. Imports only the schema.

Precision `auto`: bf16 autocast on a CUDA GPU that supports bf16 (Ampere and newer), fp32 on
every CPU. Right before fast: in the oneDNN that torch 2.14.1 bundles, bf16 training on a CPU
is broken on every x86 kind that runs it natively. On AMX its matmul leaks NaN across rows
when K % 32 != 0 (oneDNN issue #5717); on AVX-512 BF16 the backward of a convolution gives
non-finite weight gradients in a few percent of steps, even with oneDNN capped below its
bf16 kernels (ONEDNN_MAX_CPU_ISA=AVX512_CORE), and never with oneDNN off (then bf16 runs
several times slower than fp32). `make bench ARGS="--only precision"` counts those steps on
the machine at hand. Where bf16 is sound it bought 1.09x on the default study. The resolved
precision is part of the point key; it reads no timing, so it never flips with noise.
An explicit `trainer.precision=bf16` on a CPU is refused before anything runs, naming why.
"""
from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import torch

from study.settings.config import ConfigError


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


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
