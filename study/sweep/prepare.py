"""`make prepare-data`: a resized copy of an image folder, so that repeated epochs decode small
files (ImageNet's JPEGs average about 400 x 350 px; a 160 px study needs 183 px at most).

    python -m study.sweep.prepare --source /data/imagenet --dest /data/imagenet_296 --sweep resnet_rs_paper
    python -m study.sweep.prepare --source /data/imagenet --dest /data/imagenet_296 --side 296

Every image whose shorter side exceeds `side` is resized to it (aspect kept, antialiased) and
written in its own format (JPEG at quality 95, else PNG) under the same relative path; smaller
ones, and files that cannot be decoded, are copied as they are, so the copy lists the same files
in the same order and a study draws the same splits from it. With --sweep, `side` is the largest
size the sweep's points store an image at (data.resolution / data.eval_crop), plus 15%.
`prepared.json` at the copy's root names its source, the source's fingerprint and the side: a
point trained on the copy is keyed by that fingerprint at that side wherever the copy lies
(study.settings.identity) and records source and side (tags data.prepared_from, data.prepared_side), and a point that needs larger images
than the copy holds is refused before it trains. A copy interrupted half-way is finished by
running the command again (files are written whole, under a temporary name first).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_image, encode_jpeg, encode_png, read_file
from torchvision.transforms.v2.functional import resize

from study.data import imagefiles
from study.settings import config
from study.settings.config import ConfigError, stored_size

MARGIN = 1.15  # the side kept over the largest stored size: "a little above"


def side_for_sweep(sweep_file: str, overrides: list[str]) -> int:
    """MARGIN x the largest stored image side of the sweep's points, rounded up."""
    from study.settings import grid
    from study.sweep.compose import compose_sweep
    from study.sweep.compose import validate_grid

    def largest(cfg) -> int:
        jobs = grid.expand(dict(cfg.hydra.sweeper.params or {}), overrides)
        return max(stored_size(s.data) for s in validate_grid(cfg, jobs))

    return math.ceil(compose_sweep(sweep_file, overrides, within=largest) * MARGIN)


def copy_one(source: Path, dest: Path, side: int) -> str | None:
    """Write the resized (or copied) file; the reason when it could not be decoded."""
    if dest.exists():
        return None  # written whole by an earlier run
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    reason = None
    try:
        image = decode_image(read_file(str(source)), mode=ImageReadMode.RGB)
        if image.ndim == 4:
            image = image[0]
        if min(image.shape[-2:]) <= side:
            shutil.copyfile(source, tmp)
        else:
            small = resize(image, [side], antialias=True)
            jpeg = source.suffix.lower() in (".jpg", ".jpeg")
            tmp.write_bytes((encode_jpeg(small, quality=95) if jpeg else encode_png(small)).numpy().tobytes())
    except (OSError, RuntimeError) as e:
        reason = imagefiles.unreadable_note(str(source), e)
        shutil.copyfile(source, tmp)  # kept, so the copy lists what the source lists
    tmp.replace(dest)
    return reason


def prepare(source: Path, dest: Path, side: int, threads: int) -> dict:
    """Copy every listed image of `source` into `dest` at `side`; returns the manifest."""
    source, dest = source.expanduser().resolve(), dest.expanduser().resolve()
    if dest == source or source in dest.parents:
        raise ConfigError(f"--dest {dest}: must lie outside --source {source}")
    if (old := config.prepared(str(dest))) and old["side"] != side:
        raise ConfigError(f"--dest {dest} holds a copy at side {old['side']} px: choose another folder for {side} px")
    pool, test, _ = imagefiles.listing(str(source))
    splits = [s for s in (pool, test) if s is not None]
    pairs = [(Path(s.path(i)), dest / Path(s.root).relative_to(source) / s.paths[i].decode())
             for s in splits for i in range(len(s))]
    start, unreadable = time.time(), {}
    with ThreadPoolExecutor(max_workers=threads) as workers:
        for n, ((src, _), reason) in enumerate(zip(pairs, workers.map(lambda p: copy_one(*p, side), pairs)), 1):
            if reason:
                unreadable[str(src)] = reason
            if n % 10000 == 0 or n == len(pairs):
                print(f"prepare-data: {n:,}/{len(pairs):,} images, {time.time() - start:.0f}s", flush=True)
    imagefiles.report_unreadable(unreadable, str(source))
    manifest = {"source": str(source), "source_fingerprint": config.folder_fingerprint(str(source)), "side": side,
                "images": len(pairs), "unreadable": sorted(unreadable), "made": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (dest / config.PREPARED_FILE).write_text(json.dumps(manifest, indent=1))
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.sweep.prepare", description=__doc__.splitlines()[0])
    p.add_argument("--source", required=True, type=Path, help="the image folder (ImageFolder / ImageNet layout)")
    p.add_argument("--dest", required=True, type=Path, help="where the copy goes")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--side", type=int, help="the shorter side to cap images at, px")
    size.add_argument("--sweep", help="sweeps/NAME.yaml: the side its largest point needs, plus 15%%")
    p.add_argument("overrides", nargs="*", help="overrides of the sweep (as make sweep's ARGS)")
    p.add_argument("--threads", type=int, default=max(1, torch.get_num_threads()))
    a = p.parse_args(argv)
    try:
        if not a.source.expanduser().is_dir():
            raise ConfigError(f"--source {a.source}: folder does not exist")
        side = a.side if a.side is not None else side_for_sweep(a.sweep, a.overrides)
        if side < 8:
            raise ConfigError(f"--side {side}: must be >= 8 (pixels)")
        manifest = prepare(a.source, a.dest, side, a.threads)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"prepare-data: {manifest['images']:,} images at shorter side <= {side} px in {a.dest} "
          f"({len(manifest['unreadable'])} unreadable, copied as they are); train on it with data.root={a.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
