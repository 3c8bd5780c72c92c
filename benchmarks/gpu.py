"""The GPU path, measured side by side in one run on a CUDA device (`python -m benchmarks.gpu`):
the shared trainer (study.train.trainer.fit, its GPU-resident batcher, augmentation and evaluation)
at fp32 NCHW, bf16 autocast + channels_last, and the same + torch.compile, against a bare
hand-written bf16 + channels_last loop over ready batches on the device; and achieved model
FLOP/s (3 x forward FLOPs x images/s) over the measured bf16 matmul peak. Every figure is the
best of `--repeats` alternated runs; the spread is printed. Not part of the tests (CI has no GPU).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from study.data import batches, sets
from study.measure import costs
from study.settings.config import DataConfig, RecipeConfig, TrainerConfig
from study.train import models, trainer

WARMUP_STEPS = 10


class _Sink:
    def log_epoch(self, epoch, metrics, timestamp_ms=None):
        pass


def matmul_tflops(n: int = 8192, reps: int = 10) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12


def trainer_img_per_s(ds, args, precision: str, channels_last: bool, compile_: bool) -> float:
    device = torch.device("cuda")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = models.build_model(args.depth, args.width, num_classes=ds.num_classes).to(device, memory_format=fmt)
    batcher = batches.Batcher(ds, device=device, augment="flip_crop", crop_padding=0.125, memory_format=fmt,
                           crop=args.crop)
    fitted = trainer.fit(model, ds, batcher,
                         RecipeConfig(epochs=args.epochs, batch_size=args.batch, warmup_epochs=0.2),
                         TrainerConfig(progress=False, precision=precision, eval_batch_size=1024,
                                       compile=str(compile_).lower()), seed=0,
                         sink=_Sink(), device=device)
    if "compile_s" in fitted.metrics:  # what study.train.compiling's COMPILE_S["cuda"] estimates
        print(f"  compile: {fitted.metrics['compile_s']:.1f}s, saving {fitted.metrics.get('compile_gain', 0):.1%} "
              f"per epoch ({sum(1 for _ in model.modules())} modules)", flush=True)
    return fitted.metrics["train_img_per_s"]  # epochs after the first: compilation excluded


def hand_loop_img_per_s(args, steps: int) -> float:
    """A minimal bf16 + channels_last SGD loop over batches already on the device."""
    model = models.build_model(args.depth, args.width, num_classes=10).cuda().to(memory_format=torch.channels_last)
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(args.batch, 3, args.resolution, args.resolution, device="cuda", generator=g)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,), device="cuda", generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    for i in range(steps + WARMUP_STEPS):
        if i == WARMUP_STEPS:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    torch.cuda.synchronize()
    return steps * args.batch / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--depth", type=int, default=50)
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--images", type=int, default=12000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--crop", choices=["pad", "random_resized"], default="pad")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks.gpu needs a CUDA device")
    eval_crop = 0.875 if args.crop == "random_resized" else 1.0
    ds = sets.prepare(DataConfig(name="synthetic", synthetic_images=args.images, synthetic_size=args.resolution,
                                 resolution=args.resolution, minival_fraction=0.02, test_fraction=0.05,
                                 crop=args.crop, eval_crop=eval_crop))
    flops = costs.complexity(models.build_model(args.depth, args.width, num_classes=10), args.resolution, 3)["flops"]
    steps = len(ds.train) // args.batch
    variants = {"fp32 NCHW": ("fp32", False, False), "bf16 channels_last": ("bf16", True, False),
                "bf16 channels_last compile": ("bf16", True, True)}
    samples: dict[str, list[float]] = {k: [] for k in [*variants, "hand loop bf16 channels_last"]}
    peaks = []
    for _ in range(args.repeats):  # alternated, so drift hits every variant alike
        peaks.append(matmul_tflops())
        for name, (precision, cl, comp) in variants.items():
            samples[name].append(trainer_img_per_s(ds, args, precision, cl, comp))
            print(f"  sample: {name} {samples[name][-1]:.0f} img/s", flush=True)
        samples["hand loop bf16 channels_last"].append(hand_loop_img_per_s(args, steps))
        print(f"  sample: hand loop {samples['hand loop bf16 channels_last'][-1]:.0f} img/s, "
              f"matmul peak {peaks[-1]:.0f} TFLOP/s", flush=True)
    best = {k: max(v) for k, v in samples.items()}
    peak = max(peaks)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "case": f"w={args.width} d={args.depth} r={args.resolution} b={args.batch} crop={args.crop}",
              "gflops_per_image": flops / 1e9, "bf16_matmul_peak_tflops": peak,
              "img_per_s": best, "spread": {k: (min(v), max(v)) for k, v in samples.items()},
              "ratios": {
                  "trainer bf16+cl / trainer fp32": best["bf16 channels_last"] / best["fp32 NCHW"],
                  "trainer bf16+cl+compile / trainer bf16+cl": best["bf16 channels_last compile"]
                  / best["bf16 channels_last"],
                  "trainer bf16+cl / hand loop bf16+cl": best["bf16 channels_last"]
                  / best["hand loop bf16 channels_last"],
                  "model FLOP/s (trainer, compiled) / bf16 matmul peak":
                  3 * flops * best["bf16 channels_last compile"] / (peak * 1e12)}}
    print(f"{result['device']}, torch {result['torch']}, {result['case']}, "
          f"{result['gflops_per_image']:.2f} GFLOPs/image, bf16 matmul peak {peak:.0f} TFLOP/s")
    for k, v in samples.items():
        print(f"  {k:<32} {max(v):9.0f} img/s  (runs: {', '.join(f'{s:.0f}' for s in v)})")
    for k, v in result["ratios"].items():
        print(f"  {k:<52} {v:6.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
