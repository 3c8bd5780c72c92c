"""The point's batcher: the in-memory Batcher, or the StreamBatcher of a streamed set; one
interface, chosen by how the set was prepared (study.data.sets.choose_loader).
"""
from __future__ import annotations

import torch

from study.data.batches import Batcher
from study.data.sets import DataSplits
from study.data.stream import StreamBatcher
from study.settings.config import DataConfig


def batcher(ds: DataSplits, d: DataConfig, *, device: torch.device, memory_format: torch.memory_format,
            randaugment: tuple[int, float], workers: int = 0) -> Batcher:
    """The point's batcher: in memory, or streamed with `workers` loader processes."""
    settings = dict(device=device, augment=d.augment, crop_padding=d.crop_padding, crop=d.crop,
                    padding_mode=d.crop_padding_mode, crop_scale=d.crop_scale, crop_ratio=d.crop_ratio,
                    memory_format=memory_format, randaugment=randaugment)
    if ds.streamed:
        return StreamBatcher(ds, workers=workers, **settings)
    return Batcher(ds, **settings)
