"""The one training loop of every grid point.

It reads like the algorithm: for each epoch, a pass of SGD steps over augmented batches,
then an evaluation on the minival split, reported to a sink of events. After the last
epoch it evaluates the minival and test splits once more. With weight EMA on, every
evaluation uses the EMA weights (as the paper reports), and the final minival accuracy of
the raw weights is recorded beside it. A non-finite loss stops the point
with `DivergedError`. The trainer knows no tracker vendor and no config system: the
caller passes the model, the data, the recipe and where events go.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from study.data.batches import Batcher
from study.data.sets import DataSplits, Split
from study.settings.config import RecipeConfig, TrainerConfig
from study.train import compiling, distributed
from study.train import recipe as recipes
from study.train.checkpoint import Checkpoint, rng_state, set_rng_state
from study.train.distributed import ALONE, World

GUARD_EVERY = 25  # steps between non-finite-loss checks (each check syncs the device)


class EpochSink(Protocol):
    # timestamp_ms: when the epoch ended (kept in the checkpoint, so an epoch logged again after
    # a resume is the same record)
    def log_epoch(self, epoch: int, metrics: dict[str, float], timestamp_ms: int | None = None) -> None: ...


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class FitResult:
    metrics: dict[str, float]   # the final metrics of the run record
    epoch_history: list[dict[str, float]]
    loop_time_s: float          # wall time of the epochs: training steps and per-epoch evaluation
    compile: str = ""           # whether and why the training steps were compiled (study.train.compiling)


def autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def fit(model: nn.Module, ds: DataSplits, batcher: Batcher, recipe: RecipeConfig, settings: TrainerConfig,
        *, seed: int, sink: EpochSink, device: torch.device, evaluate_test: bool = True,
        checkpoint: Checkpoint | None = None, resume: dict | None = None,
        run_id: str = "", label: str = "", world: World = ALONE) -> FitResult:
    """Train; with evaluate_test=False (tuning trials) the test split is never touched.
    `label` is shown in front of the step bar (a terminal only).
    With `checkpoint`, the whole training state is saved after every epoch but the last; `resume` (a
    loaded state) continues from its epoch with every RNG where it was, so the result equals
    an uninterrupted run's in deterministic mode. With a `world` of several processes the
    steps run through DDP on each one's share of every batch, and evaluation is shared out
    (study.train.distributed); only the caller's rank 0 passes a checkpoint and a recording sink."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = recipes.make_optimizer(model, recipe)
    steps = batcher.steps_per_epoch(ds.train, recipe.batch_size)
    schedule = recipes.make_schedule(optimizer, recipe, steps)
    loss_fn = recipes.make_loss(recipe)
    ema = recipes.WeightEma(model, recipes.ema_step_decay(recipe), recipe.epochs * steps,
                            recipe.ema_horizon) if recipe.ema_decay > 0 else None
    scored = ema.model if ema else model
    history, epoch_times, stamps, done = [], [], [], 0
    if resume:
        history, epoch_times, stamps, done = _restore(resume, model, optimizer, schedule, ema, generator)
        # in case the run died between saving and logging it (with its first stamp: logged once)
        sink.log_epoch(done, history[-1], stamps[-1] if stamps else None)
    # the model the training steps run: compiled from an epoch on when study.train.compiling says so;
    # evaluation, the EMA and checkpoints use the eager `model`
    stepping = distributed.wrap(model, world, device)
    compiled_from, note = None, "off: the run ends with its first (eager, timed) epoch"
    decide_at = done + 1 if epoch_times or compiling.mode(settings.compile) != "auto" else 2
    loop_start = time.perf_counter()
    bar = tqdm(total=recipe.epochs * steps, initial=done * steps, leave=False, unit="step", desc=label or None,
               disable=None if settings.progress else True, dynamic_ncols=True)
    try:
        for epoch in range(done + 1, recipe.epochs + 1):
            if epoch == decide_at:
                on, note = compiling.decide(settings.compile, deterministic=settings.deterministic,
                                            device=device.type, model=model,
                                            epoch_s=statistics.median(epoch_times) if epoch_times else None,
                                            epochs_left=recipe.epochs - epoch + 1)
                on, note = distributed.tell(world, (on, note))  # rank 0's timing decides for all
                if on:
                    stepping, compiled_from = torch.compile(stepping), epoch
            lr = schedule.get_last_lr()[0]
            distributed.reseed(seed, epoch, world)
            t0 = time.perf_counter()
            batches = batcher.train(ds.train, recipe.batch_size, generator, shard=world.shard)
            train_loss = train_epoch(stepping, batches, optimizer, schedule, loss_fn, settings.precision, device, bar,
                                     ema, world)
            epoch_times.append(time.perf_counter() - t0)
            val = evaluate(scored, batcher, ds.minival, settings, world)
            metrics = {"train/loss": train_loss, "val/top1": val["top1"], "val/top5": val["top5"],
                       "lr": lr, "epoch_time_s": epoch_times[-1]}
            history.append(metrics)
            stamps.append(int(time.time() * 1000))
            if checkpoint and epoch < recipe.epochs:  # after the last one the point finishes at once
                checkpoint.save(_state(epoch, model, optimizer, schedule, ema, generator, history, epoch_times,
                                       run_id, stamps))
            sink.log_epoch(epoch, metrics, stamps[-1])
            bar.set_postfix(epoch=epoch, loss=f"{train_loss:.3f}", val=f"{val['top1']:.3f}")
    finally:
        bar.close()
    loop_time = time.perf_counter() - loop_start
    warmup = {0} if compiled_from is None else {0, compiled_from - 1}  # epochs that warm up or compile
    metrics = _final_metrics(scored, batcher, ds, recipe, settings, epoch_times, steps, evaluate_test, warmup, world)
    if ema:
        metrics["minival/top1_no_ema"] = evaluate(model, batcher, ds.minival, settings, world)["top1"]
    if compiled_from is not None:
        metrics |= _compile_cost(epoch_times, compiled_from - 1)
    return FitResult(metrics, history, loop_time, note)


def _compile_cost(epoch_times: list[float], first: int) -> dict[str, float]:
    """What compiling cost: the first compiled epoch's time over the compiled epochs after it
    (or the eager epochs before it when there are none), and the share of a step it saved."""
    steady = epoch_times[first + 1:] or epoch_times[:first]
    if not steady:
        return {}
    usual = statistics.median(steady)
    out = {"compile_s": max(0.0, epoch_times[first] - usual)}
    if epoch_times[first + 1:] and epoch_times[:first]:
        out["compile_gain"] = 1 - usual / statistics.median(epoch_times[:first])
    return out


def _state(epoch, model, optimizer, schedule, ema, generator, history, epoch_times, run_id, stamps) -> dict:
    return {"epoch": epoch, "run_id": run_id, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
            "ema": {"model": ema.model.state_dict(), "step": ema.step} if ema else None,
            "generator": generator.get_state(), "rng": rng_state(),
            "history": history, "epoch_times": epoch_times, "stamps": stamps}


def _restore(state, model, optimizer, schedule, ema, generator) -> tuple[list, list, list, int]:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    if ema:
        ema.model.load_state_dict(state["ema"]["model"])
        ema.step = state["ema"]["step"]
    generator.set_state(state["generator"])
    set_rng_state(state["rng"])
    return (list(state["history"]), list(state["epoch_times"]), list(state.get("stamps", [])),  # none: older
            int(state["epoch"]))


def train_epoch(model: nn.Module, batches, optimizer: torch.optim.Optimizer, schedule, loss_fn: nn.Module,
                precision: str, device: torch.device, bar, ema: recipes.WeightEma | None = None,
                world: World = ALONE) -> float:
    """One pass of SGD steps; returns the mean training loss (over every process's share).
    Raises DivergedError (on every process at the same step)."""
    model.train()
    loss_sum = torch.zeros((), device=device)
    n = 0
    for x, y in batches:
        with autocast(device, precision):
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if ema:
            ema.update()
        loss_sum += loss.detach().float()
        n += 1
        if n % GUARD_EVERY == 0:
            _guard(loss_sum, n, world)
        bar.update()
    return _guard(loss_sum, n, world) / n


def _guard(loss_sum: torch.Tensor, step: int, world: World = ALONE) -> float:
    value = distributed.total(loss_sum.clone(), world).item() / world.size
    if not math.isfinite(value):
        raise DivergedError(f"training loss became {value} by step {step} of the epoch")
    return value


@torch.inference_mode()
def evaluate(model: nn.Module, batcher: Batcher, split: Split, settings: TrainerConfig,
             world: World = ALONE) -> dict[str, float]:
    """Top-1 and top-5 accuracy of the model on a split (its batches shared out among a
    world's processes, their counts summed)."""
    model.eval()
    device = batcher.device
    correct1 = torch.zeros((), device=device, dtype=torch.long)
    correct5 = torch.zeros((), device=device, dtype=torch.long)
    n = 0  # the images evaluated (a streamed split skips unreadable files)
    for x, y in batcher.evaluate(split, settings.eval_batch_size, shard=world.shard):
        n += len(y)
        with autocast(device, settings.precision):
            logits = model(x)
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top == y[:, None]
        correct1 += hit[:, 0].sum()
        correct5 += hit.any(dim=1).sum()
    counts = distributed.total(torch.stack([correct1, correct5, torch.tensor(n, device=device)]), world).tolist()
    return {"top1": counts[0] / counts[2], "top5": counts[1] / counts[2]}


def _final_metrics(model, batcher, ds, recipe, settings, epoch_times, steps, evaluate_test,
                   warmup: set[int], world: World) -> dict[str, float]:
    minival = evaluate(model, batcher, ds.minival, settings, world)
    # Step time excludes the first epoch (warm-up of allocators and kernels) and the one that
    # compiled, when there are others.
    timed = [t for i, t in enumerate(epoch_times) if i not in warmup] or epoch_times
    step_s = sum(timed) / (len(timed) * steps)
    final = {}
    if evaluate_test:
        test = evaluate(model, batcher, ds.test, settings, world)
        final = {"top1": test["top1"], "top5": test["top5"], "error": 1 - test["top1"]}
    return final | {
            "minival/top1": minival["top1"], "minival/top5": minival["top5"],
            "train_time_s": sum(epoch_times), "train_step_ms": step_s * 1e3,
            "train_img_per_s": recipe.batch_size / step_s}
