"""Folders of image files: the listing both data paths share, and the decode of one image.

Layout (torchvision's ImageFolder): `root/<class>/*`, or `root/train/<class>/*` with the test
split in `root/test/<class>/*` or, as ImageNet ships, `root/val/<class>/*` (reported as test).
The layout and the files listed (study.settings.identity, which fingerprints the same listing)
are sorted, so a listing, and every split drawn from it, is the same on
every machine and for either data path (in memory or streamed, study.data.stream).

An image is decoded as RGB whatever its mode (greyscale, CMYK, palette, alpha), its centre square
is taken (the shorter side), and the square is resized to the side asked for (resize_uint8,
which the in-memory path resizes with too). A file
that cannot be read or decoded is reported by path and skipped, never silently.
"""
from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_image, read_file

from study.settings.identity import class_names, folders, image_names

log = logging.getLogger(__name__)
# torchvision 0.29 marks its decoders deprecated in favour of torchcodec; they still are the
# fastest JPEG/PNG decoders that come with the pinned set.
warnings.filterwarnings("ignore", message="The image decoding", category=DeprecationWarning)
SOURCE_LOCATION = re.compile(r"^[\w ]+, \S+:\d+, ")  # torchvision's "decode_jpeg, /src/x.cpp:171, "


@dataclass(frozen=True)
class FileSplit:
    """Images of a split as files: paths relative to `root` (a numpy byte-string array, so forked
    loader workers share it without copying it page by page) and labels."""
    root: str
    paths: np.ndarray   # dtype S, relative paths
    labels: torch.Tensor  # int64

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: torch.Tensor) -> FileSplit:
        return FileSplit(self.root, self.paths[index.numpy()], self.labels[index])

    def path(self, i: int) -> str:
        return os.path.join(self.root, self.paths[i].decode())


@lru_cache(maxsize=4)
def listing(root: str) -> tuple[FileSplit, FileSplit | None, tuple[str, ...]]:
    """(training pool, test split or None, class names) of an image folder, in sorted order."""
    train_dir, test_dir = folders(root)
    classes = class_names(train_dir)
    if not classes:
        raise FileNotFoundError(f"data.root={root!r}: no class sub-folders found")
    pool = _list(train_dir, classes)
    return pool, (_list(test_dir, classes) if test_dir else None), classes


def _list(folder: Path, classes: tuple[str, ...]) -> FileSplit:
    rel, labels = [], []
    for label, c in enumerate(classes):
        if not (folder / c).is_dir():
            continue
        names = [e.name for e in image_names(folder / c)]
        rel += [f"{c}/{name}" for name in names]
        labels += [label] * len(names)
    if not rel:
        raise FileNotFoundError(f"data.root: no images under {folder}")
    return FileSplit(str(folder), np.array(rel, dtype=np.bytes_), torch.tensor(labels, dtype=torch.long))


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 2048) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 N x C x H x W images to size x size."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = [F.interpolate(images[i:i + chunk].float(), size=(size, size), mode="bilinear",
                         antialias=True, align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
           for i in range(0, len(images), chunk)]
    return torch.cat(out)


def decode(path: str, side: int | None = None) -> torch.Tensor:
    """The image as uint8 RGB, 3 x S x S: its centre square, resized to `side` when given.
    Raises OSError or RuntimeError for a file that cannot be read or decoded."""
    image = decode_image(read_file(path), mode=ImageReadMode.RGB)
    if image.ndim == 4:  # an animated GIF: its first frame
        image = image[0]
    _, h, w = image.shape
    if h != w:
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        image = image[:, top:top + s, left:left + s].contiguous()
    return image if side is None or side == image.shape[-1] else resize_uint8(image[None], side)[0]


def first_side(split: FileSplit) -> int:
    """The shorter side of the first readable image: the in-memory decode size of the set."""
    for i in range(len(split)):
        try:
            return decode(split.path(i)).shape[-1]
        except (OSError, RuntimeError):
            continue
    raise FileNotFoundError(f"data.root: no readable image under {split.root}")


def unreadable_note(path: str, error: BaseException) -> str:
    """`path: what went wrong`, without the decoder's source location."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"{path}: {SOURCE_LOCATION.sub('', text)}"[:300]


def report_unreadable(found: dict[str, str], where: str) -> None:
    """One warning for the unreadable files met (all counted, the first few named)."""
    if found:
        named = "; ".join(list(found.values())[:5])
        log.warning("%d unreadable image(s) skipped in %s: %s%s", len(found), where, named,
                    " ..." if len(found) > 5 else "")
