"""When torch.compile pays (study.train.compiling): for the smallest and the largest point of the
default study and a CIFAR-sized one, in the precision `auto` picks here, the compile time (the
first compiled step over a steady compiled step) and the steady-state saving per step (median
of 5 alternated repeats of 10 steps, eager against compiled, with min-max). From those: after
how many epochs of the point compiling pays, and what `trainer.compile=auto` decides for it.
Compiles are cold (inductor's caches off): a sweep's first point of an architecture pays that."""
from __future__ import annotations

import statistics
import time

import torch

from study.settings import hardware
from study.settings.config import RecipeConfig
from study.train import compiling, models
from study.train import recipe as recipes

CPU = torch.device("cpu")
POINTS = [  # (label, width, depth, resolution, images per epoch)
    ("default smallest w=0.125 d=14 r=12", 0.125, 14, 12, 3600),
    ("default largest w=0.5 d=38 r=28", 0.5, 38, 28, 3600),
    ("cifar10 w=0.5 d=38 r=32", 0.5, 38, 32, 45000),
]
BATCH, STEPS, REPEATS = 128, 10, 5


def _stepper(model, bf16: bool):
    optimizer = recipes.make_optimizer(model, RecipeConfig())
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

    def step(x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss
    return step


def _time(step, batch, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        loss = step(*batch)
    loss.item()
    return (time.perf_counter() - t0) / n


def _point(width: float, depth: int, res: int, bf16: bool) -> dict:
    torch.manual_seed(0)
    eager = models.build_model(depth, width, num_classes=10, in_chans=1).to(memory_format=torch.channels_last)
    batch = (torch.randn(BATCH, 1, res, res).contiguous(memory_format=torch.channels_last),
             torch.randint(0, 10, (BATCH,)))
    run_eager, compiled = _stepper(eager, bf16), torch.compile(eager)
    run_compiled = _stepper(compiled, bf16)
    _time(run_eager, batch, 3)
    t0 = time.perf_counter()
    run_compiled(*batch).item()
    first = time.perf_counter() - t0
    _time(run_compiled, batch, 2)
    times = {"eager": [], "compiled": []}
    for _ in range(REPEATS):
        times["eager"].append(_time(run_eager, batch, STEPS))
        times["compiled"].append(_time(run_compiled, batch, STEPS))
    gains = [1 - c / e for e, c in zip(times["eager"], times["compiled"])]
    return {"compile_s": first - statistics.median(times["compiled"]), "gains": gains,
            "eager_step_s": statistics.median(times["eager"]), "modules": sum(1 for _ in eager.modules()),
            "model": eager}


def bench_compile(args) -> list[tuple]:
    import torch._inductor.config as inductor

    precision = hardware.resolve_precision("auto", CPU)
    rows = []
    for label, width, depth, res, images in POINTS:
        # a cold compile, as a point's first: inductor's on-disk caches would hide the cost
        with inductor.patch(force_disable_caches=True):
            torch._dynamo.reset()
            p = _point(width, depth, res, precision == "bf16")
        gain = statistics.median(p["gains"])
        epoch_s = p["eager_step_s"] * (images // BATCH)
        pays = p["compile_s"] / (gain * epoch_s) if gain > 0 else float("inf")
        on, why = compiling.decide("auto", deterministic=False, device="cpu", model=p["model"], epoch_s=epoch_s,
                                   epochs_left=349)
        rows += [
            (f"compile time, {label}", f"{precision}, {p['modules']} modules; eager step {p['eager_step_s'] * 1e3:.0f} ms",
             None, None, p["compile_s"], "seconds"),
            (f"compiled step saving, {label}",
             f"median of {REPEATS} alternated, min-max {min(p['gains']):+.3f}..{max(p['gains']):+.3f}",
             None, None, gain, "share of an eager step"),
            (f"compile pays after (epochs), {label}", f"epoch of {images} images = {epoch_s:.1f}s eager; "
             f"auto at 350 epochs: {why}", None, None, pays, "auto on only if it pays" if not on else "")]
    return rows
