"""Image folders larger than memory, streamed: `data.loader=stream` (or `auto` over the budget).

The splits stay lists of files (study.data.imagefiles), drawn exactly as the in-memory path draws
them. Each batch is a task for PyTorch DataLoader workers: they read and decode its images at
the stored size (torchvision's decoders), crop and flip them (study.data.batches.Crops, the same code
as in memory) and hand back a uint8 batch; in the training process it is moved to the device
(from pinned memory on a GPU), where RandAugment and the normalisation run as in memory.

Randomness is a function of (the training generator, epoch, image index): each epoch draws one
seed from the point's generator, which orders the epoch, and each image draws its crop and flip
from its own generator seeded by (that seed, its index). So a point is deterministic whatever the
number of workers, and resumes at an epoch boundary in the same order (the generator is
checkpointed). Evaluation decodes the centre crop, in order. Unreadable files are skipped,
counted and named (DataSplits.unreadable).
"""
from __future__ import annotations

import logging
import sys
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from study.data import imagefiles
from study.data.batches import Batcher, Crops, centre, share
from study.data.imagefiles import FileSplit
from study.data.sets import DataSplits

log = logging.getLogger(__name__)
_MIX = (6364136223846793005, 1442695040888963407)
# Workers are started by the standard library whatever process runs the point: inside the joblib
# launcher's loky workers the default context is loky's, which cannot start them.
WORKER_START = "fork" if sys.platform == "linux" else "spawn"


# --- the workers' side ---------------------------------------------------------------------

def image_seed(epoch_seed: int, index: int) -> int:
    return (epoch_seed * _MIX[0] + (index + 1) * _MIX[1]) % 2 ** 63


class BatchFiles(Dataset):
    """What a loader worker does with one task (train|eval, split name, epoch seed, indices):
    decode, crop, stack. Returns (uint8 batch, labels, [(path, reason) of unreadable files])."""

    def __init__(self, splits: dict[str, FileSplit], stored: int, crops: Crops):
        self.splits, self.stored, self.crops = splits, stored, crops

    def __len__(self) -> int:
        return sum(len(s) for s in self.splits.values())

    def __getitems__(self, task: tuple) -> tuple:
        kind, name, epoch_seed, indices = task
        split = self.splits[name]
        images, kept, bad = [], [], []
        for i in indices:
            path = split.path(i)
            try:
                images.append(imagefiles.decode(path, self.stored))
                kept.append(i)
            except (OSError, RuntimeError) as e:
                bad.append((path, imagefiles.unreadable_note(path, e)))
        labels = split.labels[kept]
        if not images:
            return torch.empty(0, 3, self.crops.resolution, self.crops.resolution, dtype=torch.uint8), labels, bad
        x = torch.stack(images)
        if kind == "eval":
            return centre(x, self.crops.resolution).contiguous(), labels, bad
        drawn = [self.crops.draw(1, self.stored, self.stored, torch.Generator().manual_seed(image_seed(epoch_seed, i)))
                 for i in kept]
        params = tuple(torch.cat(p) if p[0] is not None else None for p in zip(*drawn))
        return self.crops.apply(x, params).contiguous(), labels, bad


def _as_is(batch):
    return batch


# --- the training process's side -----------------------------------------------------------

class StreamBatcher(Batcher):
    """Batcher's interface over FileSplits: batches come from `workers` loader processes."""

    def __init__(self, ds: DataSplits, *, workers: int, **settings):
        super().__init__(ds, **settings)
        self.workers, self.unreadable = workers, ds.unreadable
        self.names = {id(ds.train): "train", id(ds.minival): "minival", id(ds.test): "test"}
        self.files = BatchFiles({"train": ds.train, "minival": ds.minival, "test": ds.test}, ds.stored_resolution,
                                self.crops)

    def train(self, split: FileSplit, batch_size: int, generator: torch.Generator,
              shard: tuple[int, int] = (0, 1)) -> Iterator[tuple]:
        """shard=(rank, N): this process reads only the rank-th 1/N of each batch's files; their
        crops are those one process draws (per image), RandAugment draws for the share."""
        epoch_seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
        perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(epoch_seed))
        name = self.names[id(split)]
        tasks = [("train", name, epoch_seed, share(perm[i * batch_size:(i + 1) * batch_size], shard).tolist())
                 for i in range(self.steps_per_epoch(split, batch_size))]
        for x, y in self._batches(tasks):
            yield self.finish(x, generator), y

    def evaluate(self, split: FileSplit, batch_size: int, shard: tuple[int, int] = (0, 1)) -> Iterator[tuple]:
        name, (rank, size) = self.names[id(split)], shard
        tasks = [("eval", name, 0, list(range(i, min(i + batch_size, len(split)))))
                 for i in range(rank * batch_size, len(split), size * batch_size)]
        for x, y in self._batches(tasks):
            yield self.normalise(x), y

    def _batches(self, tasks: list[tuple]) -> Iterator[tuple]:
        loader = DataLoader(self.files, batch_sampler=tasks, num_workers=self.workers, collate_fn=_as_is,
                            pin_memory=self.device.type == "cuda", prefetch_factor=4 if self.workers else None,
                            multiprocessing_context=WORKER_START if self.workers else None)
        for x, y, bad in loader:
            self._note(bad)
            if len(y):
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _note(self, bad: list[tuple[str, str]]) -> None:
        for path, note in bad:
            if path not in self.unreadable:
                self.unreadable[path] = note
                log.warning("unreadable image skipped: %s", note)
