"""Training speed against the hardware (issue 7): the trainer's images/s against a plain
fp32 NCHW hand-written loop and an equally optimised hand-written loop, and the achieved model
FLOP/s (3 x forward FLOPs x images/s) over the measured matmul peak of the same precision.
bf16 rows run only where a bf16 matmul is faster than fp32 (native bf16 units)."""
from __future__ import annotations

import time

import torch

from study import data, measure, models, recipe as recipes, trainer
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
    def log_epoch(self, epoch, metrics):
        pass


def _trainer(ds, width, depth, batch, precision: str) -> float:
    model = models.build_model(depth, width, num_classes=ds.num_classes, in_chans=ds.in_chans)
    model = model.to(memory_format=torch.channels_last)
    batcher = data.Batcher(ds, device=CPU, augment="flip_crop", crop_padding=0.125)
    fitted = trainer.fit(model, ds, batcher, RecipeConfig(epochs=2, batch_size=batch, warmup_epochs=0.2),
                         TrainerConfig(progress=False, precision=precision), seed=0, sink=_Sink(), device=CPU)
    return fitted.metrics["train_img_per_s"]


def bench_speed(args) -> list[tuple]:
    width, depth, res, batch = 0.5, 26, 32, 128
    steps = 13
    ds = data.prepare(DataConfig(name="synthetic", synthetic_size=res, resolution=res,
                                 synthetic_images=int(batch * steps / 0.72) + 1))
    flops = measure.complexity(models.build_model(depth, width, num_classes=10), res, 3)["flops"]
    fresh = lambda: models.build_model(depth, width, num_classes=ds.num_classes)  # noqa: E731
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(batch, 3, res, res, generator=g), torch.randint(0, 10, (batch,), generator=g))
               for _ in range(steps)]
    fp32_peak = matmul_gflops(torch.float32, 2048)
    native_bf16 = matmul_gflops(torch.bfloat16, 512) > 1.2 * matmul_gflops(torch.float32, 512)
    plain = _hand_loop(fresh(), batches, channels_last=False, bf16=False)
    tuned = _hand_loop(fresh(), batches, channels_last=True, bf16=False)
    ours = _trainer(ds, width, depth, batch, "fp32")
    case = f"w={width} d={depth} r={res} b={batch}"
    achieved = 3 * flops * ours / 1e9
    rows = [("trainer fp32 / plain NCHW loop", case, ours, plain, ours / plain, ">= 1.35"),
            ("trainer fp32 / optimised loop", "channels_last", ours, tuned, ours / tuned, ">= 0.97"),
            ("model GFLOP/s / fp32 matmul peak", "fp32", achieved, fp32_peak, achieved / fp32_peak, ">= 0.5")]
    if not native_bf16:
        rows.append(("bf16 rows skipped", "bf16 matmul not faster than fp32 here", None, None, None, ""))
        return rows
    bf16_peak = matmul_gflops(torch.bfloat16, 2048)
    tuned16 = _hand_loop(fresh(), batches, channels_last=True, bf16=True)
    ours16 = _trainer(ds, width, depth, batch, "bf16")
    achieved16 = 3 * flops * ours16 / 1e9
    return rows + [("trainer bf16 / plain NCHW loop", case, ours16, plain, ours16 / plain, ">= 1.8"),
                   ("trainer bf16 / optimised loop", "channels_last + bf16", ours16, tuned16, ours16 / tuned16,
                    ">= 0.97"),
                   ("model GFLOP/s / bf16 matmul peak", "bf16", achieved16, bf16_peak, achieved16 / bf16_peak, "")]
