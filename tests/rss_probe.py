"""`python -m tests.rss_probe ROOT LOADER`: read an image folder as a point does (one training
epoch with RandAugment, then the test split), and print the peak resident memory of the process
and its loader workers together, in MB (sampled every 20 ms), as JSON. Memory is counted as
PSS (each shared page split among the processes sharing it), so a forked worker adds what it
holds itself, not another copy of the parent."""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import torch

from study.data import loader as loaders
from study.data import sets
from study.settings.config import DataConfig


def _children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]


def _pss_mb(pid: int) -> float:
    return next(int(line.split()[1]) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
                if line.startswith("Pss:")) / 1024


def tree_pss_mb(pid: int) -> float | None:
    """Proportional resident memory (PSS) of a process and its children, summed; None when a
    worker started or ended while it was read (a fork moves pages between the processes)."""
    try:
        before = _children(pid)
        total = _pss_mb(pid) + sum(_pss_mb(c) for c in before)
        return total if _children(pid) == before else None
    except (OSError, StopIteration, ValueError):
        return None


def main(root: str, loader: str) -> None:
    peak, done = [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_pss_mb(os.getpid()) or 0.0)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cfg = DataConfig(name="image_folder", root=root, resolution=32, minival_fraction=0.02, test_fraction=0.1,
                     augment="flip_crop", crop="pad", eval_crop=1.0, crop_padding_mode="reflect", loader=loader)
    ds = sets.prepare(cfg)
    batcher = loaders.batcher(ds, cfg, device=torch.device("cpu"), memory_format=torch.channels_last,
                           randaugment=(2, 10.0), workers=1)
    images = sum(len(y) for _, y in batcher.train(ds.train, 128, torch.Generator().manual_seed(0)))
    images += sum(len(y) for _, y in batcher.evaluate(ds.test, 256))
    done.set()
    sampler.join()
    print(json.dumps({"loader": loader, "images": images, "peak_mb": peak[0]}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
