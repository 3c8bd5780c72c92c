"""The streaming input pipeline (study.data.stream) against the training step, on CIFAR-10's JPEG
folders (../shared/data; skipped where absent), at 32 px, with the loader workers a point gets
by default on this machine.

- input img/s: one epoch of streamed training batches as the trainer receives them (decoded,
  cropped and flipped by the workers, normalised in the training process), with the recipe of
  the CPU study (recipe=short: no RandAugment); and with RandAugment's 2 ops (recipe=resnet_rs),
  which run in the training process on either path;
- step img/s: SGD steps (forward, backward, update) of the smallest and largest models of the
  CIFAR-10 study as shipped until 2026-12-07 (w=0.25 d=14, w=0.5 d=38) on ready batches;
- decode img/s: study.data.imagefiles.decode alone, one thread; the whole worker task (decode + crop
  + flip), one thread.
Each ratio is the median of 5 alternated repeats, printed with its min-max.
"""
from __future__ import annotations

import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from study.data import imagefiles, loader, sets
from study.settings import hardware
from study.settings.config import DataConfig
from study.train import models

CPU = torch.device("cpu")
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"
MODELS = ((0.25, 14), (0.5, 38))  # the CIFAR-10 study's smallest and largest as shipped until 2026-12-07
REPEATS, IMAGES, BATCH = 5, 5000, 128


def _input_img_per_s(ds, cfg, workers: int, randaugment: tuple[int, float] = (0, 0.0)) -> float:
    batcher = loader.batcher(ds, cfg, device=CPU, memory_format=torch.channels_last, randaugment=randaugment,
                           workers=workers)
    t0 = time.perf_counter()
    n = sum(len(y) for _, y in batcher.train(ds.train, BATCH, torch.Generator().manual_seed(0)))
    return n / (time.perf_counter() - t0)


def _step_img_per_s(model, steps: int = 12, warmup: int = 3) -> float:
    x = torch.randn(BATCH, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (BATCH,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * BATCH / (time.perf_counter() - t0)


def _decode_img_per_s(split, task: bool, files) -> float:
    n = min(len(split), 2000)
    t0 = time.perf_counter()
    if task:
        for i in range(0, n, BATCH):
            files.__getitems__(("train", "train", 7, list(range(i, min(i + BATCH, n)))))
    else:
        for i in range(n):
            imagefiles.decode(split.path(i), 32)
    return n / (time.perf_counter() - t0)


def _spread(values: list[float]) -> str:
    return f"median of {len(values)}, min-max {min(values):.2f}-{max(values):.2f}"


def bench_stream(args) -> list[tuple]:
    if not SHARED_DATA.exists():
        return [("streamed input / train step", f"skipped: {SHARED_DATA} absent", None, None, None, "")]
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(SHARED_DATA) as tar:
            tar.extractall(tmp, filter="data")
        root = next(p.parent for p in Path(tmp).rglob("train") if p.is_dir())
        cfg = DataConfig(name="image_folder", root=str(root), resolution=32, minival_fraction=0.02, augment="flip_crop",
                         crop="pad", eval_crop=1.0, crop_padding_mode="reflect", loader="stream",
                         max_train_images=IMAGES)
        ds = sets.prepare(cfg)
        workers = sets.workers_for(None, CPU, hardware.usable_cores())
        nets = {m: models.build_model(m[1], m[0], num_classes=10).to(memory_format=torch.channels_last)
                for m in MODELS}
        inputs, augmented, steps = [], [], {m: [] for m in MODELS}
        for _ in range(REPEATS):  # alternated, so drift in the machine's speed hits both alike
            inputs.append(_input_img_per_s(ds, cfg, workers))
            augmented.append(_input_img_per_s(ds, cfg, workers, (2, 10.0)))
            for m, net in nets.items():
                steps[m].append(_step_img_per_s(net))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            files = loader.batcher(ds, cfg, device=CPU, memory_format=torch.channels_last, randaugment=(0, 0.0),
                                 workers=0).files
            decode = [_decode_img_per_s(ds.train, False, files) for _ in range(3)]
            task = [_decode_img_per_s(ds.train, True, files) for _ in range(3)]
        finally:
            torch.set_num_threads(threads)
    rows = [("streamed input img/s", f"{workers} worker(s), 32 px, {_spread(inputs)}", statistics.median(inputs),
             None, None, "")]
    for (w, d), values in steps.items():
        ratios = [i / s for i, s in zip(inputs, values)]
        rows.append((f"  input / train step (w={w} d={d})", _spread(ratios), statistics.median(inputs),
                     statistics.median(values), statistics.median(ratios), ">= 1.5"))
    rows.append(("  with RandAugment, 2 ops", _spread(augmented), statistics.median(augmented), None, None, ""))
    rows += [("decode img/s, 1 thread", f"32 px JPEG, {_spread(decode)}", statistics.median(decode), None, None, ""),
             ("  + crop and flip (a worker's task)", _spread(task), statistics.median(task), None, None, "")]
    return rows
