"""Batches on the training device, from splits held in memory: the per-image crops and flips
(Crops, shared with the streaming path), the evaluation centre crop, RandAugment
(study.data.augment) and the normalisation; `share` cuts a process's part of a global batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from study.data.augment import rand_augment
from study.data.sets import DataSplits, Split


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Indices past an edge mirrored back inside it, as F.pad(mode='reflect') does (-1 -> 1)."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def random_resized_boxes(n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                         generator: torch.Generator, tries: int = 10) -> torch.Tensor:
    """n crop boxes (x0, y0, x1, y1 in pixels) as torchvision's RandomResizedCrop draws them: an
    area fraction uniform in `scale` and an aspect ratio log-uniform in `ratio`, the first of
    `tries` draws that fits inside the image, at a uniform position; where none fits, the
    largest centred crop whose ratio lies in `ratio`. Drawn on the CPU from `generator`."""
    area = height * width * torch.empty(n, tries).uniform_(*scale, generator=generator)
    log_r = torch.empty(n, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    w = torch.sqrt(area * log_r.exp()).round()
    h = torch.sqrt(area / log_r.exp()).round()
    fits = (w >= 1) & (w <= width) & (h >= 1) & (h <= height)
    first = torch.where(fits.any(dim=1), fits.float().argmax(dim=1), torch.full((n,), -1))
    rows = torch.arange(n)
    w, h = w[rows, first.clamp_min(0)], h[rows, first.clamp_min(0)]
    aspect = width / height  # fallback: the whole image, narrowed to the ratio range
    fw = width if ratio[0] <= aspect <= ratio[1] else round(min(width, height * ratio[1]))
    fh = height if ratio[0] <= aspect <= ratio[1] else round(min(height, width / ratio[0]))
    w = torch.where(first >= 0, w, torch.tensor(float(fw)))
    h = torch.where(first >= 0, h, torch.tensor(float(fh)))
    u = torch.rand(n, 2, generator=generator)
    x0 = torch.where(first >= 0, (u[:, 0] * (width - w + 1)).floor(), torch.div(width - w, 2, rounding_mode="floor"))
    y0 = torch.where(first >= 0, (u[:, 1] * (height - h + 1)).floor(), torch.div(height - h, 2, rounding_mode="floor"))
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def centre(x: torch.Tensor, resolution: int) -> torch.Tensor:
    top = (x.shape[-2] - resolution) // 2
    left = (x.shape[-1] - resolution) // 2
    return x[..., top:top + resolution, left:left + resolution]


@dataclass(frozen=True)
class Crops:
    """The per-image crop and flip of training images, uint8 in (stored size), uint8 out (the
    resolution): `pad`, a random crop of the padded image, as one gather over the batch; or
    `random_resized`, a random area and aspect ratio per image (random_resized_boxes) resized to
    the resolution in one batched bilinear ROI-align; with flip_crop, a horizontal flip per
    image. `draw` takes the random parameters of b images (from one generator, or image by image
    from each image's own, study.data.stream), `apply` uses them; augment `none`: the centre crop."""
    augment: str
    crop: str
    resolution: int
    pad: int
    padding_mode: str = "zero"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def draw(self, b: int, height: int, width: int, generator: torch.Generator) -> tuple:
        if self.augment == "none":
            return ()
        if self.crop == "random_resized":
            where = random_resized_boxes(b, height, width, self.scale, self.ratio, generator)
        else:
            where = torch.randint(0, 2 * self.pad + 1, (2, b), generator=generator).T
        flips = torch.rand(b, generator=generator) < 0.5 if self.augment == "flip_crop" else None
        return where, flips

    def apply(self, x: torch.Tensor, params: tuple) -> torch.Tensor:
        if self.augment == "none":
            return centre(x, self.resolution)
        if self.crop == "random_resized":
            return self._resized(x, *params)
        return self._padded(x, *params)

    def _resized(self, x: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor | None) -> torch.Tensor:
        """Each box resized to the resolution (bilinear, averaging over each output pixel's
        footprint when shrinking), then flipped where drawn."""
        from torchvision.ops import roi_align

        b = x.shape[0]
        rois = torch.cat([torch.arange(b, dtype=boxes.dtype)[:, None], boxes], dim=1).to(x.device)
        out = roi_align(x.float(), rois, output_size=(self.resolution, self.resolution), spatial_scale=1.0,
                        sampling_ratio=-1, aligned=True)
        out = out.round_().clamp_(0, 255).to(torch.uint8)
        if flips is not None:
            out = torch.where(flips.to(x.device)[:, None, None, None], out.flip(-1), out)
        return out

    def _padded(self, x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor | None) -> torch.Tensor:
        x = centre(x, self.resolution)
        b, _, h, w = x.shape
        p = self.pad
        off = offsets.T.to(x.device)
        rows = off[0, :, None] + torch.arange(h, device=x.device)
        ramp = torch.arange(w, device=x.device)
        if flips is not None:
            ramp = torch.where(flips.to(x.device)[:, None], ramp.flip(0), ramp)
        cols = off[1, :, None] + ramp
        batch = torch.arange(b, device=x.device)[:, None, None]
        if self.padding_mode == "reflect":  # index the mirrored border instead of padding
            rows, cols = _reflect(rows - p, h), _reflect(cols - p, w)
            return x[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        padded = F.pad(x, (p, p, p, p)) if p else x
        return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def share(x: torch.Tensor, shard: tuple[int, int]) -> torch.Tensor:
    """The rank-th of N equal parts of a batch (shard = (rank, N))."""
    rank, size = shard
    n = len(x) // size
    return x if size == 1 else x[rank * n:(rank + 1) * n]


class Batcher:
    """Turns uint8 splits into normalised float batches on `device`. Training batches are
    shuffled, cropped and flipped per image (Crops, with the training generator), then get
    RandAugment when `randaugment` = (ops, magnitude) has ops > 0 (study.data.augment). Evaluation
    takes the centre crop of the stored image at the resolution. On a GPU each split is copied
    to the device once (uint8, from pinned memory), so batches are cut, augmented and normalised
    there. study.data.stream.StreamBatcher serves streamed sets with the same interface."""

    def __init__(self, ds: DataSplits, *, device: torch.device, augment: str, crop_padding: float,
                 memory_format: torch.memory_format = torch.channels_last,
                 randaugment: tuple[int, float] = (0, 0.0), crop: str = "pad",
                 crop_scale: tuple[float, float] = (0.08, 1.0), crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 padding_mode: str = "zero"):
        self.device, self.memory_format, self.resolution = device, memory_format, ds.resolution
        self.randaugment = randaugment
        pad = round(crop_padding * ds.resolution) if augment != "none" else 0
        self.crops = Crops(augment, crop, ds.resolution, pad, padding_mode, tuple(crop_scale), tuple(crop_ratio))
        mean = torch.tensor(ds.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(ds.std, device=device).view(1, -1, 1, 1)
        self.scale, self.shift = 1 / (255 * std), -mean / std
        self.resident = device.type != "cpu"  # each split held on the device once; a test sets it on CPU tensors
        self._resident: dict[int, Split] = {}

    def _on_device(self, split: Split) -> Split:
        """The split's copy on the device, made once (uint8, from pinned memory on a GPU)."""
        if not self.resident:
            return split
        if id(split) not in self._resident:
            pin = (lambda t: t.pin_memory()) if self.device.type == "cuda" else (lambda t: t.clone())
            self._resident[id(split)] = Split(pin(split.images).to(self.device, non_blocking=True),
                                              pin(split.labels).to(self.device, non_blocking=True))
        return self._resident[id(split)]

    def train(self, split: Split, batch_size: int, generator: torch.Generator,
              shard: tuple[int, int] = (0, 1)) -> Iterator[tuple]:
        """One epoch of shuffled full batches (a single short batch if the split is smaller).
        shard=(rank, N): the rank-th 1/N of each batch, drawn and augmented exactly as one
        process draws the whole batch."""
        split = self._on_device(split)
        n = len(split)
        perm = torch.randperm(n, generator=generator).to(self.device)
        for i in range(self.steps_per_epoch(split, batch_size)):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            x, y = self.finish(self.crop(split.images[idx], generator), generator), split.labels[idx]
            yield share(x, shard), share(y, shard)

    def finish(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A cropped uint8 training batch on the device: RandAugment, then normalised."""
        if self.randaugment[0]:
            x = rand_augment(x, *self.randaugment, generator=generator)
        return self.normalise(x)

    def evaluate(self, split: Split, batch_size: int, shard: tuple[int, int] = (0, 1)) -> Iterator[tuple]:
        """The centre crop at the resolution of every image, in order; with shard=(rank, N)
        every N-th batch from the rank-th."""
        split = self._on_device(split)
        rank, size = shard
        for i in range(rank * batch_size, len(split), size * batch_size):
            yield self.normalise(centre(split.images[i:i + batch_size], self.resolution)), \
                split.labels[i:i + batch_size]

    def crop(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Training crops of a uint8 batch, drawn from `generator`."""
        return self.crops.apply(x, self.crops.draw(len(x), x.shape[-2], x.shape[-1], generator))

    def steps_per_epoch(self, split, batch_size: int) -> int:
        return max(1, len(split) // batch_size)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=self.memory_format)
        return torch.addcmul(self.shift, x.float(), self.scale).contiguous(memory_format=self.memory_format)
