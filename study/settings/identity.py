"""What a point trained on, as part of its identity: the fingerprint of an image folder's
contents, never its path, so the same images moved or mounted elsewhere are the same point and
another folder (another data set, or the same one with its labels cleaned) is another point.

The fingerprint hashes the sorted listing of the images a point reads (study.data.imagefiles
lists the same files: class sub-folders of the root, or of its train/ and test/ or val/
folders) with each file's size: `files:<20 hex digits>`. A copy made by `make prepare-data`
keeps its source's fingerprint plus the side it was resized to (`files:...@296px`), so it is
recognised as that data at that size wherever it lies.

Listing a large folder takes a while (ImageNet: 1.3 million stats), so the result is cached:
beside the data in `.study-fingerprint.json` where the folder is writable, else under
<project>/.cache/fingerprints/ (study.settings.config passes the folder). The cache holds a stamp of the folders' modification times; a
file added, removed, renamed or moved between class folders changes them, and the listing is
hashed again. (A file rewritten in place under its name, keeping its folder's time, is not seen
until the cache file is deleted.) Reading that stamp stats every class folder (ImageNet: 2,000,
about 30 ms); a sweep that validates all its points reads it once per folder (`once`).
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif"}
TEST_FOLDERS = ("test", "val")  # the test split's folder, in order of preference
CACHE_FILE = ".study-fingerprint.json"
PREPARED_FILE = "prepared.json"  # written by `make prepare-data` at the root of a resized copy
PREFIX = "files:"


_stamps: dict[str, str] | None = None  # folder -> its stamp, while `once` holds


@contextmanager
def once():
    """Within it, each folder's stamp is read once: a sweep validating every point before any
    trains lists a folder's class folders once, not once per point."""
    global _stamps
    outer = _stamps
    _stamps = {} if outer is None else outer
    try:
        yield
    finally:
        _stamps = outer


class Unreadable(ValueError):
    """The folder's images cannot be listed: the message says why, for `data.root`."""


def folders(root: str | Path) -> tuple[Path, Path | None]:
    """(training folder, test folder or None) of an image-folder data set."""
    root = Path(root).expanduser()
    if not (root / "train").is_dir():
        return root, None
    test = next((root / name for name in TEST_FOLDERS if (root / name).is_dir()), None)
    return root / "train", test


def class_names(folder: Path) -> tuple[str, ...]:
    return tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))


def image_names(folder: Path) -> list[os.DirEntry]:
    """The image files of one class folder, sorted by name."""
    with os.scandir(folder) as entries:
        return sorted((e for e in entries if Path(e.name).suffix.lower() in IMAGE_SUFFIXES and e.is_file()),
                      key=lambda e: e.name)


def prepared(root: str | None) -> dict | None:
    """The manifest of a copy made by `make prepare-data` ({source, source_fingerprint, side,
    images, ...}), or None."""
    if not root:
        return None
    path = Path(root).expanduser() / PREPARED_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def fingerprint(root: str, cache: Path) -> str:
    """The fingerprint of the images under `root` (a prepared copy: its source's at its side),
    cached beside them or else in the folder `cache`; raises Unreadable."""
    if (copy := prepared(root)) and copy.get("source_fingerprint"):
        return f"{copy['source_fingerprint']}@{int(copy['side'])}px"
    path = Path(root).expanduser()
    try:
        if _stamps is None:
            stamp = _stamp(path)
        else:
            stamp = _stamps[str(path)] = _stamps.get(str(path)) or _stamp(path)
        return _cached(str(path.resolve()), stamp, str(cache))
    except PermissionError as e:
        raise Unreadable(f"cannot be read ({e.strerror}: {e.filename})") from e
    except OSError as e:
        raise Unreadable(f"cannot be listed ({e.strerror or e})") from e


def _stamp(root: Path) -> str:
    """The layout (train/test folders, class names) and the modification times of the class
    folders, whose entries the listing reads (not the root's: the cache file is written there)."""
    train, test = folders(root)
    classes = class_names(train)
    if not classes:
        raise Unreadable("no class sub-folders found (an image folder is root/<class>/<image> or "
                         "root/train/<class>/<image>)")
    dirs = [d / c for d in (train, test) if d for c in classes if (d / c).is_dir()]
    lines = [f"{train}|{test}", *classes, *(f"{d}:{d.stat().st_mtime_ns}" for d in dirs)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@lru_cache(maxsize=16)
def _cached(root: str, stamp: str, cache: str) -> str:
    for place in _cache_files(Path(root), Path(cache)):
        try:
            saved = json.loads(place.read_text())
        except (OSError, ValueError):
            continue
        if saved.get("stamp") == stamp and str(saved.get("fingerprint", "")).startswith(PREFIX):
            return saved["fingerprint"]
    value, images = _hash_listing(Path(root))
    _save(Path(root), Path(cache), {"fingerprint": value, "stamp": stamp, "images": images})
    return value


def _hash_listing(root: Path) -> tuple[str, int]:
    """`files:<hex>` of the sorted (relative path, size) of every listed image, and their count."""
    train, test = folders(root)
    classes = class_names(train)
    digest, n = hashlib.sha256(), 0
    for folder in (train, test):
        for c in classes if folder else ():
            if not (folder / c).is_dir():
                continue
            for e in image_names(folder / c):
                rel = os.path.relpath(e.path, root)
                digest.update(f"{rel}\t{e.stat().st_size}\n".encode())
                n += 1
    if not n:
        raise Unreadable("holds no images in its class sub-folders (" + ", ".join(sorted(IMAGE_SUFFIXES)) + ")")
    return PREFIX + digest.hexdigest()[:20], n


def _cache_files(root: Path, cache: Path) -> list[Path]:
    return [root / CACHE_FILE, cache / (hashlib.sha256(str(root).encode()).hexdigest()[:16] + ".json")]


def _save(root: Path, cache: Path, record: dict) -> None:
    """Beside the data where it may be written, else in `cache`; never an error."""
    text = json.dumps(record | {"root": str(root)}, indent=1)
    for place in _cache_files(root, cache):
        try:
            place.parent.mkdir(parents=True, exist_ok=True)
            tmp = place.with_name(place.name + f".{os.getpid()}.tmp")
            tmp.write_text(text)
            tmp.replace(place)
            return
        except OSError:
            continue
