"""Training speed against the hardware: the trainer's images/s against a plain fp32 NCHW
hand-written loop and the best hand-written loop of the same run, and the achieved model FLOP/s
(3 x forward FLOPs x images/s) over the matmul peak measured in the same repeat. Each figure is the
median of 5 alternated repeats, printed with its min-max. bf16 rows run where trainer.precision=auto
picks bf16 (a CPU with native bf16: study.device), and are then the rows of `auto`."""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import replace

import torch

from study import data, measure, models, trainer
from study import device as devices
from study.config import DataConfig, RecipeConfig, TrainerConfig

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
    batcher = data.Batcher(ds, device=CPU, augment="flip_crop", crop_padding=0.125)
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
    best hand-written loop of that repeat: of plain NCHW fp32 and channels_last fp32, and for
    bf16 (where auto picks it: native units) channels_last bf16."""
    width, depth, res, batch = 0.5, 26, 32, 128
    steps = 13
    ds = data.prepare(DataConfig(name="synthetic", synthetic_size=res, resolution=res,
                                 synthetic_images=int(batch * steps / 0.72) + 1))
    flops = measure.complexity(models.build_model(depth, width, num_classes=10), res, 3)["flops"]
    fresh = lambda: models.build_model(depth, width, num_classes=ds.num_classes)  # noqa: E731
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(batch, 3, res, res, generator=g), torch.randint(0, 10, (batch,), generator=g))
               for _ in range(steps)]
    native_bf16 = devices.resolve_precision("auto", CPU) == "bf16"
    runs = {k: [] for k in ("plain", "tuned", "tuned16", "ours", "ours16", "peak", "peak16")}
    for _ in range(REPEATS):  # alternated: drift in the machine's speed hits every figure alike
        runs["plain"].append(_hand_loop(fresh(), batches, channels_last=False, bf16=False))
        runs["tuned"].append(_hand_loop(fresh(), batches, channels_last=True, bf16=False))
        runs["ours"].append(_trainer(ds, width, depth, batch, "fp32"))
        runs["peak"].append(matmul_gflops(torch.float32, 2048))
        if native_bf16:
            runs["tuned16"].append(_hand_loop(fresh(), batches, channels_last=True, bf16=True))
            runs["ours16"].append(_trainer(ds, width, depth, batch, "bf16"))
            runs["peak16"].append(matmul_gflops(torch.bfloat16, 2048))
    case = f"w={width} d={depth} r={res} b={batch}"
    best32 = [max(p, t) for p, t in zip(runs["plain"], runs["tuned"])]
    achieved = [3 * flops * o / 1e9 for o in runs["ours"]]
    rows = [_ratio_row("trainer fp32 / plain NCHW loop", case, runs["ours"], runs["plain"], ">= 1.35"),
            _ratio_row("trainer fp32 / best fp32 loop", "best of NCHW, channels_last", runs["ours"], best32,
                       ">= 0.97"),
            _ratio_row("model GFLOP/s / fp32 matmul peak", "fp32", achieved, runs["peak"], ">= 0.5")]
    if not native_bf16:
        rows.append(("bf16 rows skipped", "no native bf16: auto is fp32", None, None, None, ""))
        return rows
    best = [max(b, t) for b, t in zip(best32, runs["tuned16"])]
    achieved16 = [3 * flops * o / 1e9 for o in runs["ours16"]]
    return rows + [
        _ratio_row("trainer auto=bf16 / plain NCHW", case, runs["ours16"], runs["plain"], ">= 1.8"),
        _ratio_row("trainer auto=bf16 / best loop", "best of fp32 loops, channels_last bf16", runs["ours16"], best,
                   ">= 0.97"),
        _ratio_row("trainer bf16 / trainer fp32", "what bf16 buys here", runs["ours16"], runs["ours"], ""),
        _ratio_row("model GFLOP/s / bf16 matmul peak", "bf16", achieved16, runs["peak16"], "")]


def _default_study(overrides: list[str]) -> list:
    """The default study's points (sweeps/default.yaml), composed and validated as a sweep does."""
    from study import grid
    from study.decide import compose_sweep
    from study.sweep import validate_grid

    return compose_sweep("default", overrides, within=lambda cfg: validate_grid(
        cfg, grid.expand(dict(cfg.hydra.sweeper.params or {}), overrides)))


# (width, depth, resolution): every width x depth pair of the default study once, each resolution 3 times
LATIN_SQUARE = {(0.125, 14, 12), (0.125, 26, 28), (0.125, 38, 20), (0.25, 14, 28), (0.25, 26, 20), (0.25, 38, 12),
                (0.5, 14, 20), (0.5, 26, 12), (0.5, 38, 28)}


def bench_precision(args) -> list[tuple]:
    """trainer.precision=auto against fp32 on the default study: a Latin square of its points (each
    of the 9 depth x width pairs once, each resolution 3 times) at 2 epochs, trained through the
    point's own code (data, model, batcher, trainer); each repeat all 9 in fp32 then in auto's
    precision, alternated; the ratio of summed training time, median of 3 repeats with min-max."""
    from study import point

    auto = devices.resolve_precision("auto", CPU)
    if auto == "fp32":
        return [("precision auto / fp32", "no native bf16: auto is fp32", None, None, None, "")]
    studies = [s for s in _default_study(["recipe.epochs=2", "trainer.progress=false"])
               if (s.model.width, s.model.depth, s.data.resolution) in LATIN_SQUARE]
    times = {"fp32": [], auto: []}
    for _ in range(3):
        for precision in times:
            total = 0.0
            for study in studies:
                study = replace(study, trainer=replace(study.trainer, precision=precision))
                ds = data.prepare(study.data)
                _, fitted = point._train(study, ds=ds, device=CPU, memory_format=torch.channels_last, sink=_Sink())
                total += fitted.metrics["train_time_s"]
            times[precision].append(total)
    hand = _hand_ceiling(studies, auto)
    return [_ratio_row(f"default study: auto={auto} / fp32", f"{len(studies)} points (a Latin square), 2 epochs; "
                       "1 / summed train_time_s", [1 / t for t in times[auto]], [1 / t for t in times["fp32"]],
                       ">= 1.2"),
            _ratio_row(f"hand loop, same models: {auto} / fp32", "the ceiling of the row above: a bare channels_last "
                       "SGD loop on each point's model and drawn batches (1 epoch); 1 / summed step time",
                       [1 / t for t in hand[auto]], [1 / t for t in hand["fp32"]], "(what any loop gets)")]


def _hand_ceiling(studies: list, precision: str) -> dict[str, list[float]]:
    """What bf16 can give these models whoever writes the loop: the summed step time of a bare
    hand-written loop (no EMA, no schedule) over one epoch of each point's own batches, in fp32 and
    in `precision`, alternated, 3 repeats. Each loop starts from the same initial weights."""
    from study import point

    cases = []
    for study in studies:
        ds, r = data.prepare(study.data), study.recipe
        torch.manual_seed(study.seed)
        model = point._build(study, ds).to(memory_format=torch.channels_last)
        batcher = data.batcher(ds, study.data, device=CPU, memory_format=torch.channels_last, workers=0,
                               randaugment=(r.randaugment_ops, r.randaugment_magnitude))
        cases.append((model, list(batcher.train(ds.train, r.batch_size, torch.Generator().manual_seed(0)))))
    times = {"fp32": [], precision: []}
    for _ in range(3):
        for p in times:
            times[p].append(sum((len(b) - WARMUP_STEPS) * len(b[0][1]) / _hand_loop(
                copy.deepcopy(m), b, channels_last=True, bf16=p == "bf16") for m, b in cases))
    return times
