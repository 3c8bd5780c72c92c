"""Pure measurements of a model: each function returns a dict; the caller logs it.

FLOPs are torch's FlopCounterMode counts (2 x multiply-adds), one image, forward pass.
Activations are the elements written by every convolution and linear layer for one image
(the pycls definition). Latency uses warm-up, device synchronisation and the median of
repeats, and records the batch size it was measured at.
"""
from __future__ import annotations

import contextlib
import os
import re
import resource
import statistics
import sys
import time
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from study.settings import hardware
from study.settings.config import ModelConfig
from study.train import models


def complexity(model: nn.Module, resolution: int, in_chans: int) -> dict[str, int]:
    """Parameters, forward FLOPs and activations for one image at `resolution`."""
    activations = 0

    def count(_module, _inputs, output):
        nonlocal activations
        activations += output.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.zeros(1, in_chans, resolution, resolution, device=device)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "flops": int(counter.get_total_flops()),
        "activations": int(activations),
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def inference_latency(model: nn.Module, resolution: int, in_chans: int, *, batch_size: int,
                      repeats: int = 10, warmup: int = 2,
                      memory_format: torch.memory_format = torch.contiguous_format,
                      autocast_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Median wall time of one inference forward pass at `batch_size`."""
    device = next(model.parameters()).device
    x = torch.randn(batch_size, in_chans, resolution, resolution, device=device)
    x = x.contiguous(memory_format=memory_format)
    was_training = model.training
    model.eval()
    times = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16,
                                                enabled=autocast_dtype is not None):
        for i in range(warmup + repeats):
            synchronize(device)
            t0 = time.perf_counter()
            model(x)
            synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    model.train(was_training)
    median_ms = statistics.median(times) * 1e3
    return {"latency_ms": median_ms, "latency_batch": batch_size,
            "inference_img_per_s": batch_size / (median_ms / 1e3)}


PROC_STATUS, PROC_CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: the CUDA allocator's, or on Linux the process's resident-set
    high-water mark (writing 5 to /proc/self/clear_refs resets VmHWM)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:
            PROC_CLEAR_REFS.write_text("5")
        except OSError:
            pass  # not Linux, or not allowed: the peak then covers the whole process


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak memory since reset_peak_memory: CUDA allocator peak on a GPU; on the CPU the
    process's peak resident set (VmHWM; ru_maxrss where /proc is absent)."""
    if device.type == "cuda":
        return {"peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20}
    try:
        hwm = next(line for line in PROC_STATUS.read_text().splitlines() if line.startswith("VmHWM:"))
        return {"peak_mem_mb": int(hwm.split()[1]) / 2**10}  # kB
    except (OSError, StopIteration):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return {"peak_mem_mb": rss / (2**20 if sys.platform == "darwin" else 2**10)}


STEP_BATCH_MAX = 128  # the paper's latency batch: the largest up to 128 that fits


def training_step_latency(model: nn.Module, resolution: int, in_chans: int, num_classes: int, *,
                          repeats: int = 10, warmup: int = 3, batch_max: int = STEP_BATCH_MAX,
                          memory_format: torch.memory_format = torch.contiguous_format,
                          autocast_dtype: torch.dtype | None = None) -> dict[str, float]:
    """The paper's latency: wall time of one training step (forward, backward, SGD update) at
    the largest batch up to `batch_max` that fits (halved on out-of-memory), synchronised,
    after warm-up; the median of `repeats`, with min and max; and the memory of one such step
    (step_peak_memory_mb). Changes the model's weights: give it a model built for measuring."""
    device = next(model.parameters()).device
    batch = batch_max
    while True:
        try:
            step = _training_step(model, resolution, in_chans, num_classes, batch, memory_format, autocast_dtype)
            times = _step_times(step, device, repeats, warmup)
            break
        except (torch.OutOfMemoryError, MemoryError):
            if batch == 1:
                raise
            batch //= 2
            if device.type == "cuda":
                torch.cuda.empty_cache()
    median_ms = statistics.median(times) * 1e3
    return {"step_latency_ms": median_ms, "step_latency_min_ms": min(times) * 1e3,
            "step_latency_max_ms": max(times) * 1e3, "step_batch": batch, "step_img_per_s": batch / median_ms * 1e3,
            **step_peak_memory_mb(step, device)}


def _training_step(model, resolution, in_chans, num_classes, batch, memory_format, autocast_dtype):
    """A closure running one training step on a fixed random batch; its tensors as `.live`."""
    device = next(model.parameters()).device
    x = torch.randn(batch, in_chans, resolution, resolution, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, num_classes, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    loss_fn = nn.CrossEntropyLoss()
    model.train()

    def step() -> None:
        with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step.live = lambda: [x, y, *model.parameters(), *model.buffers(), *(p.grad for p in model.parameters()
                                                                         if p.grad is not None),
                         *(t for s in opt.state.values() for t in s.values() if torch.is_tensor(t))]
    return step


def _step_times(step, device: torch.device, repeats: int, warmup: int) -> list[float]:
    times = []
    for i in range(warmup + repeats):
        synchronize(device)
        t0 = time.perf_counter()
        step()
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


@contextlib.contextmanager
def _native_stderr_silenced():
    """The profiler's native library writes lines of its own (start, stop, no GPU found) to the
    process's stderr: sent to /dev/null while it runs, for a sweep's output stays one line a point."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def step_peak_memory_mb(step, device: torch.device) -> dict[str, float]:
    """`step_peak_mem_mb`: the most memory one training step holds at once: the CUDA allocator's
    peak; on the CPU, the tensors alive when it starts (weights, gradients, optimizer state, the
    batch) plus the peak of what the step allocates beyond them, from the profiler's allocation
    records. Not the process's resident set (`peak_mem_mb`). Empty where the profiler gives none."""
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        step()
        synchronize(device)
        return {"step_peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2 ** 20}
    live = sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in step.live()}.values())
    try:
        with _native_stderr_silenced(), \
                torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        records = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                         if e.name() == "[memory]")
    except (AttributeError, RuntimeError):  # a profiler without allocation records
        return {}
    running = peak = 0
    for _, nbytes in records:
        running += nbytes
        peak = max(peak, running)
    return {"step_peak_mem_mb": (live + peak) / 2 ** 20}


def machine(device: torch.device) -> dict[str, str]:
    """What a measurement ran on: CPU model and ISA flags that matter for speed, GPU, threads."""
    cpu, flags = hardware.cpu()
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    threads = torch.get_num_threads()
    out = {"measure.cpu": cpu, "measure.isa": " ".join(isa) or "unknown", "measure.threads": str(threads),
           "measure.device": str(device)}
    what = f"{cpu} x{threads}"
    if device.type == "cuda":
        what = out["measure.gpu"] = torch.cuda.get_device_name(device)
    out["measure.machine"] = re.sub(r"[^A-Za-z0-9.]+", "-", f"{device.type} {what}").strip("-")
    return out


@lru_cache(maxsize=None)
def configuration_complexity(m: ModelConfig, resolution: int, num_classes: int = 10,
                             in_chans: int = 3) -> dict[str, int]:
    """Parameters, forward FLOPs and activations of one image of a model configuration, counted
    on the meta device (no weights, no compute): what a point of it records (`flops`, `params`)."""
    with torch.device("meta"):
        model = models.model_of(m, num_classes=num_classes, in_chans=in_chans)
    return complexity(model, resolution, in_chans)
