"""Training speed against the hardware: the trainer's images/s against a plain fp32 NCHW
hand-written loop and the best hand-written loop of the same run, and the achieved model FLOP/s
(3 x forward FLOPs x images/s) over the matmul peak measured in the same repeat. Each figure is the
median of 5 alternated repeats, printed with its min-max. `--only precision`: why
trainer.precision=auto is fp32 on CPUs (bf16's soundness and speed on the machine at hand)."""
from __future__ import annotations

import statistics
import time

import torch

from study.data import batches, sets
from study.measure import costs
from study.settings import hardware
from study.settings.config import DataConfig, RecipeConfig, TrainerConfig
from study.train import models, trainer

CPU = torch.device("cpu")


def matmul_gflops(dtype: torch.dtype, n: int, reps: int = 3) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


WARMUP_STEPS = 3


def _hand_loop(model, batches, *, channels_last: bool, bf16: bool) -> float:
    """Images/s of a minimal SGD loop over ready float batches, timed like the trainer: the
    wall time of all steps after a warm-up (the trainer times its epochs after the first)."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    for i, (x, y) in enumerate(batches):
        if i == WARMUP_STEPS:
            t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    loss.item()
    return (len(batches) - WARMUP_STEPS) * len(batches[0][1]) / (time.perf_counter() - t0)


class _Sink:
    def log_epoch(self, epoch, metrics, timestamp_ms=None):
        pass


def _trainer(ds, width, depth, batch, precision: str) -> float:
    model = models.build_model(depth, width, num_classes=ds.num_classes, in_chans=ds.in_chans)
    model = model.to(memory_format=torch.channels_last)
    batcher = batches.Batcher(ds, device=CPU, augment="flip_crop", crop_padding=0.125)
    fitted = trainer.fit(model, ds, batcher, RecipeConfig(epochs=2, batch_size=batch, warmup_epochs=0.2),
                         TrainerConfig(progress=False, precision=precision), seed=0, sink=_Sink(), device=CPU)
    return fitted.metrics["train_img_per_s"]


REPEATS = 5


def _ratio_row(label: str, case: str, ours: list[float], base: list[float], target: str) -> tuple:
    """The median over repeats of ours / baseline (each repeat's pair measured side by side),
    with min-max."""
    ratios = [o / b for o, b in zip(ours, base)]
    spread = f"{case}; median of {len(ratios)}, min-max {min(ratios):.3f}-{max(ratios):.3f}"
    return (label, spread, statistics.median(ours), statistics.median(base), statistics.median(ratios), target)


def bench_speed(args) -> list[tuple]:
    """Every figure a median of REPEATS alternated repeats. The baseline of each repeat is the
    best hand-written fp32 loop of that repeat: plain NCHW or channels_last (CPUs train in fp32:
    study.point.device)."""
    width, depth, res, batch = 0.5, 26, 32, 128
    steps = 13
    ds = sets.prepare(DataConfig(name="synthetic", synthetic_size=res, resolution=res,
                                 synthetic_images=int(batch * steps / 0.72) + 1))
    flops = costs.complexity(models.build_model(depth, width, num_classes=10), res, 3)["flops"]
    fresh = lambda: models.build_model(depth, width, num_classes=ds.num_classes)  # noqa: E731
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(batch, 3, res, res, generator=g), torch.randint(0, 10, (batch,), generator=g))
               for _ in range(steps)]
    runs = {k: [] for k in ("plain", "tuned", "ours", "peak")}
    for _ in range(REPEATS):  # alternated: drift in the machine's speed hits every figure alike
        runs["plain"].append(_hand_loop(fresh(), batches, channels_last=False, bf16=False))
        runs["tuned"].append(_hand_loop(fresh(), batches, channels_last=True, bf16=False))
        runs["ours"].append(_trainer(ds, width, depth, batch, "fp32"))
        runs["peak"].append(matmul_gflops(torch.float32, 2048))
    case = f"w={width} d={depth} r={res} b={batch}"
    best32 = [max(p, t) for p, t in zip(runs["plain"], runs["tuned"])]
    achieved = [3 * flops * o / 1e9 for o in runs["ours"]]
    return [_ratio_row("trainer fp32 / plain NCHW loop", case, runs["ours"], runs["plain"], ">= 1.35"),
            _ratio_row("trainer fp32 / best fp32 loop", "best of NCHW, channels_last", runs["ours"], best32, ">= 0.97"),
            _ratio_row("model GFLOP/s / fp32 matmul peak", "fp32", achieved, runs["peak"], ">= 0.5")]


# (width, depth, resolution): every width x depth pair of the default study once, each resolution 3 times
LATIN_SQUARE = {(0.125, 14, 12), (0.125, 26, 28), (0.125, 38, 20), (0.25, 14, 28), (0.25, 26, 20), (0.25, 38, 12),
                (0.5, 14, 20), (0.5, 26, 12), (0.5, 38, 28)}


PROBE_STEPS = 30  # steps per model and variant (oneDNN off, several times slower: a third of them)


def bench_precision(args) -> list[tuple]:
    """Why trainer.precision=auto is fp32 on CPUs, measured on this machine: the default study's
    Latin square (9 of its models, each of the 9 depth x width pairs once, each resolution 3 times),
    forward and backward passes on one fixed batch of 128 each (MNIST's 1 channel, channels_last, no
    update): fp32 and bf16 autocast on 1 thread (a point's share under JOBS=2) and on all of them,
    and bf16 with oneDNN off. A sound path gives finite gradients at every step; the time is the
    summed step time against fp32's on as many threads."""
    flags = hardware.cpu()[1]
    if not any(f in flags for f in hardware.NATIVE_BF16):
        return [("bf16 on this CPU", hardware.cpu_bf16(flags), None, None, None, "")]
    cores = hardware.usable_cores()
    # name -> (bf16, oneDNN on, threads, steps)
    variants = {"fp32, 1 thread": (False, True, 1, PROBE_STEPS), "bf16, 1 thread": (True, True, 1, PROBE_STEPS),
                f"fp32, {cores} threads": (False, True, cores, PROBE_STEPS),
                f"bf16, {cores} threads": (True, True, cores, PROBE_STEPS),
                "fp32, oneDNN off": (False, False, cores, PROBE_STEPS // 3),
                "bf16, oneDNN off": (True, False, cores, PROBE_STEPS // 3)}
    bad, seconds = {v: 0 for v in variants}, {v: 0.0 for v in variants}
    threads = torch.get_num_threads()
    try:
        for width, depth, res in sorted(LATIN_SQUARE):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(128, 1, res, res, generator=g).contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, 10, (128,), generator=g)
            for name, (bf16, onednn, n_threads, steps) in variants.items():  # each from the same initial weights
                torch.set_num_threads(n_threads)
                torch.manual_seed(0)
                model = models.build_model(depth, width, num_classes=10, in_chans=1)
                with torch.backends.mkldnn.flags(enabled=onednn):
                    b, t = _probe(model.to(memory_format=torch.channels_last), x, y, bf16, steps)
                bad[name] += b
                seconds[name] += t
    finally:
        torch.set_num_threads(threads)
    print(f"precision probe: {hardware.cpu_bf16(flags)}")
    rows = [(f"{name}: non-finite", f"steps of {len(LATIN_SQUARE)} models", bad[name],
             len(LATIN_SQUARE) * variants[name][3], bad[name] / (len(LATIN_SQUARE) * variants[name][3]), "0")
            for name in variants]
    pairs = [(f"bf16, {n}", f"fp32, {n}") for n in ("1 thread", f"{cores} threads", "oneDNN off")]
    return rows + [(f"{half} / fp32", "summed step time", seconds[half], seconds[full], seconds[half] / seconds[full], "")
                   for half, full in pairs]


def _probe(model, x, y, bf16: bool, steps: int) -> tuple[int, float]:
    """Steps whose gradients are not all finite, and the time of the steps after a warm-up."""
    bad, t0 = 0, 0.0
    for step in range(steps + WARMUP_STEPS):
        if step == WARMUP_STEPS:
            t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        bad += step >= WARMUP_STEPS and not all(torch.isfinite(p.grad).all() for p in model.parameters()
                                                 if p.grad is not None)
    return bad, time.perf_counter() - t0
