"""Streamed image folders (study.data.stream): the same splits, pixels and statistics as in memory,
determinism whatever the workers, resumption, odd files, and the choice of path."""
from __future__ import annotations

import io
import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torchvision.io import write_jpeg, write_png

from study.data import imagefiles, sets
from study.data import loader as loaders
from study.record.tracking import NullTracker
from study.settings import config
from study.settings.config import ConfigError, DataConfig, RecipeConfig, TrainerConfig
from study.train import models, trainer
from study.train.checkpoint import Checkpoint

CPU = torch.device("cpu")


def image_folder(root: Path, classes: int = 3, per_class: int = 40, side: int = 20, test: str = "val",
                 shapes: tuple = ()) -> Path:
    """ImageNet's layout, train/<class>/*.JPEG and <test>/<class>/*.JPEG: each class a colour
    with noise (learnable), `shapes` as (height, width) cycled per image (default: square)."""
    g = torch.Generator().manual_seed(0)
    colours = torch.rand(classes, 3, 1, 1, generator=g) * 200
    for split, n in (("train", per_class), (test, per_class // 4)):
        for c, colour in enumerate(colours):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(n):
                h, w = shapes[i % len(shapes)] if shapes else (side, side)
                noise = torch.randn(3, h, w, generator=g) * 30
                write_jpeg((colour + noise + 20).clamp(0, 255).to(torch.uint8), str(folder / f"{i:04d}.JPEG"),
                           quality=95)
    return root


def cfg_for(root: Path, loader: str, **kw) -> DataConfig:
    settings = dict(name="image_folder", root=str(root), resolution=16, minival_fraction=0.1, augment="flip_crop",
                    crop="pad", eval_crop=1.0, crop_padding_mode="reflect", loader=loader)
    return DataConfig(**(settings | kw))


def batches(ds, cfg, workers=0, epoch_generator_seed=0, randaugment=(0, 0.0)):
    b = loaders.batcher(ds, cfg, device=CPU, memory_format=torch.contiguous_format, randaugment=randaugment,
                     workers=workers)
    return b, list(b.train(ds.train, 16, torch.Generator().manual_seed(epoch_generator_seed)))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return image_folder(tmp_path_factory.mktemp("imagenet"))


def test_streamed_splits_pixels_and_statistics_equal_the_in_memory_ones(folder):
    memory = sets.prepare(cfg_for(folder, "memory"))
    streamed = sets.prepare(cfg_for(folder, "stream"))
    assert streamed.streamed and not memory.streamed
    assert (len(streamed.train), len(streamed.minival), len(streamed.test)) == (108, 12, 30)  # val/ is the test
    assert torch.equal(streamed.train.labels, memory.train.labels)
    assert torch.equal(streamed.test.labels, memory.test.labels)
    assert (streamed.mean, streamed.std) == (memory.mean, memory.std)
    for split in ("train", "minival", "test"):
        b_mem = loaders.batcher(memory, cfg_for(folder, "memory"), device=CPU, memory_format=torch.contiguous_format,
                             randaugment=(0, 0.0))
        b_str = loaders.batcher(streamed, cfg_for(folder, "stream"), device=CPU,
                             memory_format=torch.contiguous_format, randaugment=(0, 0.0), workers=1)
        a = torch.cat([x for x, _ in b_mem.evaluate(getattr(memory, split), 7)])
        b = torch.cat([x for x, _ in b_str.evaluate(getattr(streamed, split), 7)])
        assert torch.equal(a, b), split  # the same pixels, the same normalisation, the same order


@pytest.mark.parametrize("crop", ["pad", "random_resized"])
def test_streamed_batches_are_a_function_of_the_generator_not_of_the_workers(folder, crop):
    extra = dict(crop=crop, eval_crop=0.875 if crop == "random_resized" else 1.0)
    cfg = cfg_for(folder, "stream", **extra)
    ds = sets.prepare(cfg)
    _, alone = batches(ds, cfg, workers=0)
    _, two = batches(ds, cfg, workers=2)
    _, other = batches(ds, cfg, workers=0, epoch_generator_seed=1)
    assert len(alone) == len(ds.train) // 16 and alone[0][0].shape == (16, 3, 16, 16)
    assert all(torch.equal(x, x2) and torch.equal(y, y2) for (x, y), (x2, y2) in zip(alone, two))
    assert not torch.equal(alone[0][1], other[0][1])  # another epoch: another order
    # each image draws its own crop and flip: the same image in two epochs differs
    memory = sets.prepare(cfg_for(folder, "memory", **extra))
    b = loaders.batcher(memory, cfg_for(folder, "memory", **extra), device=CPU, memory_format=torch.contiguous_format,
                     randaugment=(0, 0.0))
    plain = torch.cat([x for x, _ in b.evaluate(memory.train, 64)])
    x = alone[0][0]
    assert sum(not any(torch.equal(img, p) for p in plain) for img in x) >= 8


def test_a_streamed_point_resumes_to_the_uninterrupted_result(folder, tmp_path):
    from tests.test_checkpoint import whole_and_resumed

    cfg = cfg_for(folder, "stream")
    ds = sets.prepare(cfg)
    recipe = RecipeConfig(epochs=3, batch_size=16, warmup_epochs=0.5, ema_decay=0.9)

    def fit(sink, checkpoint=None, resume=None):
        torch.manual_seed(0)
        model = models.build_model(14, 0.25, num_classes=ds.num_classes)
        batcher = loaders.batcher(ds, cfg, device=CPU, memory_format=torch.channels_last, randaugment=(2, 10.0),
                               workers=1)
        sink.start_point("t", {}, {"point_key": "k"})
        return trainer.fit(model, ds, batcher, recipe, TrainerConfig(progress=False, deterministic=True), seed=0,
                           sink=sink, device=CPU, checkpoint=checkpoint, resume=resume, run_id="run-1")

    whole, _, resumed = whole_and_resumed(fit, Checkpoint(tmp_path / "p.pt"))
    for key in ("top1", "minival/top1", "minival/top1_no_ema"):
        assert resumed.metrics[key] == whole.metrics[key], key
    assert whole.metrics["top1"] > 0.6  # it learns the colours


def test_any_mode_and_size_is_read_and_unreadable_files_are_named_and_counted(tmp_path, caplog):
    from PIL import Image

    root = image_folder(tmp_path / "odd", classes=2, per_class=12, shapes=((20, 30), (40, 24)))
    cls = root / "train" / "n00000000"
    write_png(torch.full((1, 18, 18), 90, dtype=torch.uint8), str(cls / "grey.png"))
    Image.new("RGBA", (18, 18), (90, 90, 90, 128)).save(cls / "alpha.png")
    Image.new("P", (26, 18)).save(cls / "palette.gif")
    cmyk = io.BytesIO()
    Image.new("CMYK", (22, 22), (0, 100, 200, 0)).save(cmyk, "JPEG")
    (cls / "cmyk.jpg").write_bytes(cmyk.getvalue())
    (cls / "broken.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (cls / "empty.png").write_bytes(b"")
    (cls / "notes.txt").write_text("not an image: never listed")
    pool, _, _ = imagefiles.listing(str(root))
    assert len(pool) == 2 * 12 + 6
    caplog.set_level(logging.WARNING)
    memory = sets.prepare(cfg_for(root, "memory", minival_fraction=0.2))
    assert memory.native_resolution == 20 and memory.train.images.shape[1:] == (3, 16, 16)  # the first one's shorter side
    assert sorted(Path(p).name for p in memory.unreadable) == ["broken.JPEG", "empty.png"]
    assert "2 unreadable image(s) skipped" in caplog.text and "broken.JPEG" in caplog.text
    caplog.clear()
    cfg = cfg_for(root, "stream", minival_fraction=0.2)
    streamed = sets.prepare(cfg)
    assert len(streamed.train) + len(streamed.minival) == 30  # listed; found unreadable when read
    b, got = batches(streamed, cfg, workers=1)
    evaluated = sum(len(y) for split in (streamed.train, streamed.minival) for _, y in b.evaluate(split, 8))
    assert evaluated == 28  # every readable image, once
    assert sorted(Path(p).name for p in streamed.unreadable) == ["broken.JPEG", "empty.png"]
    assert caplog.text.count("unreadable image skipped") == 2 and "empty.png" in caplog.text
    assert sum(len(y) for _, y in got) <= len(streamed.train)
    for x, _ in got:
        assert x.shape[1:] == (3, 16, 16)


def test_auto_streams_over_the_memory_budget_and_says_why(folder):
    small = cfg_for(folder, "auto", memory_budget_gb=1e-4)  # 100 kB
    big = cfg_for(folder, "auto", memory_budget_gb=1.0)
    assert sets.choose_loader(small)[0] == "stream" and sets.choose_loader(big)[0] == "memory"
    why = sets.choose_loader(small, largest_stored=64)[1]
    assert why.startswith("streamed from files: 150 images decoded at 20 px and stored at 64 px take 0.0 GB")
    assert sets.prepare(small).streamed and not sets.prepare(big).streamed
    assert sets.choose_loader(DataConfig(name="mnist"))[0] == "memory"
    assert sets.workers_for(None, CPU, cores=2) == 1 and sets.workers_for(3, CPU, cores=2) == 3
    assert sets.workers_for(None, torch.device("cuda"), cores=16, jobs=2) == 7


def test_bad_loader_settings_are_named_before_training(tmp_path):
    from tests.conftest import compose_cfg

    with pytest.raises(ConfigError, match=r"data.loader='stream': stream reads image files: only data=image_folder"):
        config.validate(compose_cfg("config", ["data.loader=stream"]))
    with pytest.raises(ConfigError, match=r"data.loader='fast': must be one of auto, memory, stream"):
        config.validate(compose_cfg("config", ["data.loader=fast"]))
    with pytest.raises(ConfigError, match=r"data.memory_budget_gb=0.0: must be > 0 \(GB\) or null"):
        config.validate(compose_cfg("config", ["data.memory_budget_gb=0"]))
    (tmp_path / "flat").mkdir()  # refused when validated, before anything is built
    with pytest.raises(ConfigError, match="data.root=.*flat': the folder no class sub-folders found"):
        config.validate(compose_cfg("config", ["data=image_folder", f"data.root={tmp_path / 'flat'}"]))


def test_a_streamed_sweep_says_how_it_reads_and_records_it(tmp_path):
    """The CLI as a user runs it: a 2-point sweep over an image folder with a broken file,
    forced to stream, its points in parallel (JOBS=2: loader workers started from the joblib
    launcher's own workers); then the same sweep in memory skips both points (same point keys)."""
    from mlflow.tracking import MlflowClient

    from tests.conftest import point_runs, run_cli

    root = image_folder(tmp_path / "imagenet", per_class=24)
    (root / "train" / "n00000001" / "zz_broken.JPEG").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    args = ["--multirun", "data=image_folder", f"data.root={root}", "data.resolution=16", "model.depth=14",
            "model.width=0.25,0.5", "recipe.epochs=3", "recipe.warmup_epochs=0.5", "recipe.batch_size=16", "trainer.latency_repeats=2",
            "trainer.progress=false", "sweep=streamed", "analysis.auto=false"]
    done = run_cli(*args, "data.loader=stream", "data.workers=1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                   home=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "data: data.loader=stream" in done.stdout
    assert "1 unreadable image(s) skipped, listed in the run's unreadable.json" in done.stdout
    runs = point_runs(tmp_path, "streamed")
    assert len(runs) == 2
    for run in runs:
        assert (run.data.tags["data.loader"], run.data.tags["data.workers"]) == ("stream", "1")
        assert run.data.metrics["data.unreadable_images"] == 1 and run.data.metrics["top1"] > 0.5
        path = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").download_artifacts(run.info.run_id, "unreadable.json",
                                                                                   str(tmp_path / run.info.run_id))
        assert list(json.loads(Path(path).read_text())) == [str(root / "train" / "n00000001" / "zz_broken.JPEG")]
    again = run_cli(*args, "data.loader=auto", home=tmp_path)
    assert "data: in memory: 91 images decoded at 20 px" in again.stdout, again.stdout
    assert again.stdout.count("skipped: finished as run") == 2


# --- on CIFAR-10's JPEG folders (../shared/data): accuracy and memory -------------------------

@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> Path:
    import tarfile

    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.exists():
        pytest.skip(f"CIFAR-10 JPEG archive absent ({SHARED_DATA}): it lies beside the project in CI only")
    out = tmp_path_factory.mktemp("cifar")
    with tarfile.open(SHARED_DATA) as tar:
        tar.extractall(out, filter="data")
    return next(p.parent for p in out.rglob("train") if p.is_dir())


def _cifar_top1(root: Path, loader: str, seed: int) -> float:
    cfg = DataConfig(name="image_folder", root=str(root), resolution=32, minival_fraction=0.02, augment="flip_crop",
                     crop="pad", eval_crop=1.0, crop_padding_mode="reflect", loader=loader, max_train_images=10000)
    ds = sets.prepare(cfg)
    torch.manual_seed(seed)
    model = models.build_model(14, 0.25, num_classes=10).to(memory_format=torch.channels_last)
    batcher = loaders.batcher(ds, cfg, device=CPU, memory_format=torch.channels_last, randaugment=(0, 0.0), workers=1)
    sink = NullTracker()
    sink.start_point("t", {}, {"point_key": "k"})
    recipe = RecipeConfig(epochs=4, batch_size=128, warmup_epochs=0.5, lr_per_256=0.2)
    return trainer.fit(model, ds, batcher, recipe, TrainerConfig(progress=False), seed=seed, sink=sink,
                       device=CPU).metrics["top1"]


@pytest.mark.slow
def test_a_streamed_cifar_point_reaches_the_in_memory_top1_within_seed_noise(cifar):
    memory = [_cifar_top1(cifar, "memory", seed) for seed in (0, 1)]
    streamed = [_cifar_top1(cifar, "stream", seed) for seed in (0, 1)]
    noise = max(3 * abs(memory[0] - memory[1]), 0.015)  # seeds' spread, at least 1.5 points (10k test images)
    gap = abs(sum(streamed) / 2 - sum(memory) / 2)
    print(f"top-1 in memory {memory}, streamed {streamed}: gap {gap:.4f}, allowed {noise:.4f}")
    assert min(memory) > 0.4 and gap <= noise


def _peak_mb(root: Path, loader: str) -> float:
    import subprocess
    import sys

    from tests.conftest import ROOT

    done = subprocess.run([sys.executable, "-m", "tests.rss_probe", str(root), loader], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=True)
    return json.loads(done.stdout.splitlines()[-1])["peak_mb"]


def _repeated(cifar: Path, out: Path, copies: int) -> Path:
    """500 training images a class, each linked `copies` times under other names."""
    for c in sorted(p for p in (cifar / "train").iterdir()):
        (out / c.name).mkdir(parents=True)
        for f in sorted(c.iterdir())[:500]:
            for r in range(copies):
                (out / c.name / f"{r}_{f.name}").symlink_to(f)
    return out


@pytest.mark.slow
def test_streamed_memory_stays_flat_as_the_data_grows_tenfold(cifar, tmp_path):
    one, ten = _repeated(cifar, tmp_path / "x1", 1), _repeated(cifar, tmp_path / "x10", 10)
    streamed = {n: _peak_mb(root, "stream") for n, root in ((1, one), (10, ten))}
    memory = {n: _peak_mb(root, "memory") for n, root in ((1, one), (10, ten))}
    print(f"peak MB (PSS, process and workers) streamed {streamed}, in memory {memory}")
    assert streamed[10] - streamed[1] < 200
    assert memory[10] - memory[1] > 45_000 * 3 * 32 * 32 / 2 ** 20  # the probe sees the 45,000 decoded images


# --- make prepare-data -------------------------------------------------------------------

def test_a_prepared_copy_lists_the_same_files_smaller_and_is_recorded(tmp_path):
    from study.sweep import prepare
    from study.settings.grid import point_key
    from tests.conftest import compose_cfg

    source = image_folder(tmp_path / "src", classes=2, per_class=8, shapes=((60, 40), (20, 20)))
    (source / "train" / "n00000001" / "zz_broken.JPEG").write_bytes(b"\xff\xd8 truncated")
    dest = tmp_path / "copy"
    assert prepare.main(["--source", str(source), "--dest", str(dest), "--side", "24"]) == 0
    before, after = imagefiles.listing(str(source)), imagefiles.listing(str(dest))
    assert [s.paths.tolist() for s in before[:2]] == [s.paths.tolist() for s in after[:2]]  # the same splits
    big = after[0].path(0)
    assert imagefiles.decode(big).shape[-1] == 24 and Path(big).read_bytes()[:2] == b"\xff\xd8"  # still a JPEG
    assert (dest / "train/n00000001/zz_broken.JPEG").read_bytes() == b"\xff\xd8 truncated"
    manifest = json.loads((dest / "prepared.json").read_text())
    assert (manifest["source"], manifest["side"], manifest["images"]) == (str(source.resolve()), 24, 21)
    assert [Path(p).name for p in manifest["unreadable"]] == ["zz_broken.JPEG"]
    stamp = Path(big).stat().st_mtime_ns
    assert prepare.main(["--source", str(source), "--dest", str(dest), "--side", "24"]) == 0
    assert Path(big).stat().st_mtime_ns == stamp  # run again: what was written whole stays
    assert prepare.main(["--source", str(source), "--dest", str(dest), "--side", "32"]) == 2  # another side

    on_copy = config.validate(compose_cfg("config", ["data=image_folder", f"data.root={dest}", "data.resolution=20"]))
    on_source = config.validate(compose_cfg("config", ["data=image_folder", f"data.root={source}",
                                                       "data.resolution=20"]))
    # the copy is its source's data at 24 px, wherever it lies: another point than the source's
    assert on_copy.data.fingerprint == on_source.data.fingerprint + "@24px"
    assert point_key(on_copy) != point_key(on_source)
    moved = dest.rename(tmp_path / "moved")
    on_moved = config.validate(compose_cfg("config", ["data=image_folder", f"data.root={moved}", "data.resolution=20"]))
    assert point_key(on_moved) == point_key(on_copy)
    moved.rename(dest)
    from study.point.lifecycle import data_tags

    tags = data_tags(on_copy, sets.prepare(on_copy.data), 0)
    assert tags["data.prepared_from"] == str(source.resolve()) and tags["data.prepared_side"] == "24"
    with pytest.raises(ConfigError, match=r"data.root=.*a copy prepared at shorter side 24 px .* stores images at "
                                          r"32 px"):
        config.validate(compose_cfg("config", ["data=image_folder", f"data.root={dest}", "data.resolution=32"]))


def test_prepare_data_takes_its_side_from_a_sweep(tmp_path):
    from study.sweep import prepare

    source = image_folder(tmp_path / "src", classes=2, per_class=4)
    # sweeps/cifar10_cpu.yaml: 16 and 24 px, whole images stored (eval_crop 1): 24 x 1.15 -> 28
    assert prepare.side_for_sweep("cifar10_cpu", [f"data.root={source}"]) == 28
    assert prepare.side_for_sweep("cifar10_cpu", [f"data.root={source}", "data.resolution=32"]) == 37
    assert prepare.main(["--source", str(tmp_path / "nope"), "--dest", str(tmp_path / "d"), "--side", "9"]) == 2
