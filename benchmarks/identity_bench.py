"""Data identity (study/settings/identity.py): what fingerprinting an image folder costs a sweep
that validates every point before any trains. A folder of 1,000 classes (ImageNet's count) in
train/ and val/, one small file each; 100 points validated one by one (each reads the folder's
stamp: a stat of every class folder) against the same 100 inside `identity.once()` (as
study.sweep.compose.validate_grid does: the stamp read once), alternated, three times each."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from study.settings import config, identity
from study.settings.config import DataConfig, StudyConfig

CLASSES, POINTS, REPEATS = 1000, 100, 3


def _folder(root: Path) -> Path:
    for split in ("train", "val"):
        for c in range(CLASSES):
            (root / split / f"n{c:08d}").mkdir(parents=True)
            (root / split / f"n{c:08d}" / "0.JPEG").write_bytes(b"x" * 64)
    return root


def _validate(points: list[StudyConfig], held: bool) -> float:
    start = time.perf_counter()
    if held:
        with identity.once():
            for p in points:
                config.validate(p)
    else:
        for p in points:
            config.validate(p)
    return time.perf_counter() - start


def bench_fingerprint(args) -> list[tuple]:
    with tempfile.TemporaryDirectory() as tmp:
        root = _folder(Path(tmp) / "data")
        points = [StudyConfig(data=DataConfig(name="image_folder", root=str(root), resolution=8 + i % 4))
                  for i in range(POINTS)]
        start = time.perf_counter()
        config.validate(points[0])  # lists and hashes the folder, then caches beside it
        first = time.perf_counter() - start
        times = {True: [], False: []}
        for _ in range(REPEATS):
            for held in (False, True):
                times[held].append(_validate(points, held))
    plain, once = min(times[False]), min(times[True])
    case = f"{POINTS} points, {CLASSES} classes"
    spread = lambda ts: f"spread {min(ts):.2f}-{max(ts):.2f} s"  # noqa: E731
    return [("validate a grid: once / per point", case, once, plain, once / plain, f"< 1 ({spread(times[True])}; "
             f"per point {spread(times[False])})"),
            ("  first fingerprint of the folder, s", f"{2 * CLASSES} files listed and hashed", first, None, None, "")]
