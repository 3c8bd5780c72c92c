"""Data: the offline default, seeded splits, image folders, resize once, batched augmentation."""
from __future__ import annotations

import tarfile

import pytest
import torch
from torchvision.io import write_png

from study.data import sets
from study.settings.config import DataConfig
from tests.conftest import SHARED_DATA
from study.data import batches


def _key(split: sets.Split) -> set[bytes]:
    return {img.numpy().tobytes() for img in split.images}


MNIST = DataConfig(minival_fraction=0.1, crop="pad", eval_crop=1.0)  # conf/data/mnist.yaml: 10% minival on the 4,000-image pool


def test_mnist_default_is_real_offline_digits_split_with_a_fixed_seed():
    from study.settings import config
    from tests.conftest import compose_cfg

    assert config.validate(compose_cfg()).data == MNIST
    ds = sets.prepare(MNIST)
    assert (len(ds.train), len(ds.minival), len(ds.test)) == (3600, 400, 1000)
    assert ds.train.images.dtype == torch.uint8 and ds.train.images.shape[1:] == (1, 28, 28)
    assert ds.num_classes == 10 and set(ds.train.labels.tolist()) == set(range(10))
    assert not (_key(ds.train) & _key(ds.test)) and not (_key(ds.minival) & _key(ds.test))
    again = sets._load.__wrapped__(sets._source_key(MNIST))  # bypass the cache
    assert torch.equal(again.test.labels, ds.test.labels)


def test_split_seed_changes_the_split():
    a = sets.prepare(DataConfig(name="synthetic", resolution=16))
    b = sets.prepare(DataConfig(name="synthetic", resolution=16, split_seed=1))
    assert not torch.equal(a.test.labels, b.test.labels) or not torch.equal(a.test.images, b.test.images)


def test_resize_is_done_once_per_resolution_and_antialiased():
    small = sets.prepare(DataConfig(resolution=14))
    assert small.train.images.shape[-2:] == (14, 14)
    assert sets.prepare(DataConfig(resolution=14)) is small  # cached, not resized again
    native = sets.prepare(DataConfig(resolution=28))
    box = native.train.images[:8].float().reshape(8, 1, 14, 2, 14, 2).mean(dim=(3, 5))
    assert (small.train.images[:8].float() - box).abs().mean() < 8  # close to area averaging


def test_max_train_images_takes_a_subset():
    ds = sets.prepare(DataConfig(max_train_images=500))
    assert len(ds.train) == 500 and len(ds.test) == 1000


def test_training_batches_are_augmented_per_image_on_the_device():
    ds = sets.prepare(DataConfig(name="synthetic", resolution=16))
    batcher = batches.Batcher(ds, device=torch.device("cpu"), augment="flip_crop", crop_padding=0.25)
    x, y = next(batcher.train(ds.train, 64, torch.Generator().manual_seed(0)))
    assert x.shape == (64, 3, 16, 16) and x.dtype == torch.float32 and y.shape == (64,)
    assert x.is_contiguous(memory_format=torch.channels_last)
    plain = batches.Batcher(ds, device=torch.device("cpu"), augment="none", crop_padding=0.25)
    x0, y0 = next(plain.train(ds.train, 64, torch.Generator().manual_seed(0)))
    assert torch.equal(y, y0)
    changed = (x - x0).abs().flatten(1).amax(1) > 1e-3
    assert 0 < changed.sum() < 64 or changed.all()  # images differ from the unaugmented ones
    assert changed.float().mean() > 0.5  # each image draws its own crop / flip


def test_a_split_held_on_the_device_gives_the_batches_of_the_host_path_for_the_same_seed():
    """The GPU path (each split copied to the device once as uint8; crops, flips, RandAugment and the
    normalisation made there from the CPU generator's draws), run on CPU tensors."""
    ds = sets.prepare(DataConfig(name="synthetic", resolution=16))
    settings = dict(device=torch.device("cpu"), augment="flip_crop", crop_padding=0.25, randaugment=(2, 9.0))
    host, held = batches.Batcher(ds, **settings), batches.Batcher(ds, **settings)
    held.resident = True
    for epoch in range(2):
        a = list(host.train(ds.train, 64, torch.Generator().manual_seed(epoch)))
        b = list(held.train(ds.train, 64, torch.Generator().manual_seed(epoch)))
        assert len(a) == len(b) > 1 and all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b))
    evaluated = [torch.equal(x, u) for (x, _), (u, _) in zip(host.evaluate(ds.test, 50), held.evaluate(ds.test, 50))]
    assert evaluated and all(evaluated)
    copies = held._resident
    assert len(copies) == 2 and all(c.images.dtype == torch.uint8 for c in copies.values())  # once per split
    assert all(c.images.data_ptr() != s.images.data_ptr() for c, s in zip(copies.values(), (ds.train, ds.test)))


def test_normalisation_uses_training_statistics():
    ds = sets.prepare(DataConfig())
    batcher = batches.Batcher(ds, device=torch.device("cpu"), augment="none", crop_padding=0)
    x = torch.cat([b[0] for b in batcher.evaluate(ds.train, 1000)])
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05


def test_image_folder_with_class_subfolders(tmp_path):
    g = torch.Generator().manual_seed(0)
    for c in range(3):
        (tmp_path / f"class{c}").mkdir()
        for i in range(20):
            img = torch.randint(0, 255, (3, 10 + (i % 2) * 2, 10), dtype=torch.uint8, generator=g)
            write_png(img, str(tmp_path / f"class{c}" / f"{i}.png"))
    ds = sets.prepare(DataConfig(name="image_folder", root=str(tmp_path), resolution=8,
                                 test_fraction=0.25, minival_fraction=0.1))
    assert ds.num_classes == 3 and ds.in_chans == 3
    assert len(ds.train) + len(ds.minival) + len(ds.test) == 60 and len(ds.test) == 15
    assert ds.train.images.shape[-2:] == (8, 8)


@pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"CIFAR-10 JPEG archive absent ({SHARED_DATA})")
@pytest.mark.slow
def test_cifar10_jpeg_folder_loads_with_its_own_test_split(tmp_path):
    with tarfile.open(SHARED_DATA) as tar:
        tar.extractall(tmp_path, filter="data")
    root = next(p.parent for p in tmp_path.rglob("train") if p.is_dir())
    ds = sets.prepare(DataConfig(name="image_folder", root=str(root), resolution=32, minival_fraction=0.02))
    assert (len(ds.train), len(ds.minival), len(ds.test)) == (49000, 1000, 10000)
    assert ds.num_classes == 10 and ds.train.images.shape[1:] == (3, 32, 32)
    counts = torch.bincount(ds.test.labels)
    assert counts.tolist() == [1000] * 10


def test_random_resized_boxes_have_torchvisions_statistics():
    from torchvision.transforms import RandomResizedCrop

    n, size = 4000, 64
    boxes = batches.random_resized_boxes(n, size, size, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= size).all() and (boxes[:, 3] <= size).all()
    torch.manual_seed(0)
    image = torch.zeros(3, size, size)
    ref = torch.tensor([RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)],
                       dtype=torch.float)  # (top, left, h, w)
    ours_area, ref_area = (w * h / size ** 2), ref[:, 2] * ref[:, 3] / size ** 2
    assert abs(ours_area.mean() - ref_area.mean()) < 0.02 and abs(ours_area.std() - ref_area.std()) < 0.02
    ours_aspect, ref_aspect = (w / h).log(), (ref[:, 3] / ref[:, 2]).log()
    assert abs(ours_aspect.mean() - ref_aspect.mean()) < 0.02 and abs(ours_aspect.std() - ref_aspect.std()) < 0.02
    centre_x, ref_centre_x = (boxes[:, 0] + w / 2) / size, (ref[:, 1] + ref[:, 3] / 2) / size
    assert abs(centre_x.mean() - ref_centre_x.mean()) < 0.02 and abs(centre_x.std() - ref_centre_x.std()) < 0.02


def _ramp_dataset(stored: int, resolution: int) -> sets.DataSplits:
    """One image whose pixel (row, col) holds 15 x col in every channel (a horizontal ramp)."""
    value = (15 * torch.arange(stored)[None, :]).expand(stored, stored)
    images = value.to(torch.uint8).expand(1, 3, stored, stored).contiguous()
    split = sets.Split(images, torch.zeros(1, dtype=torch.long))
    return sets.DataSplits("ramp", split, split, split, 2, (0.0,) * 3, (1 / 255,) * 3, stored, resolution)


def test_the_whole_image_at_scale_one_and_the_centre_crop_in_evaluation():
    ds = _ramp_dataset(16, 14)
    whole = batches.Batcher(ds, device=torch.device("cpu"), augment="crop", crop_padding=0, crop="random_resized",
                         crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), memory_format=torch.contiguous_format)
    x = whole.crop(ds.train.images, torch.Generator().manual_seed(0))
    assert x.shape[-2:] == (14, 14)
    # the whole 16 px ramp squeezed into 14 columns: rising, from within its first to within its last step
    row = x[0, 0, 7].long()
    assert (row.diff() > 0).all() and row[0] < 15 and row[-1] > 15 * 14
    centre, _ = next(whole.evaluate(ds.test, 8))
    expected = (15 * torch.arange(1, 15)[None, :]).expand(14, 14)
    assert torch.equal(centre[0, 0].round().long(), expected)  # std 1/255, mean 0: the raw values


def test_random_resized_crops_are_deterministic_and_stored_larger_for_the_centre_crop():
    cfg = DataConfig(name="synthetic", synthetic_images=200, resolution=14, crop="random_resized", eval_crop=0.875)
    ds = sets.prepare(cfg)
    assert ds.stored_resolution == 16 and ds.resolution == 14
    b = batches.Batcher(ds, device=torch.device("cpu"), augment="flip_crop", crop_padding=0.125, crop="random_resized")
    first = [x for x, _ in b.train(ds.train, 32, torch.Generator().manual_seed(3))]
    again = [x for x, _ in b.train(ds.train, 32, torch.Generator().manual_seed(3))]
    assert all(torch.equal(a, c) for a, c in zip(first, again)) and first[0].shape[-2:] == (14, 14)


def test_reflect_padding_mirrors_the_border_as_torch_pads():
    import torch.nn.functional as F

    n, p = 7, 3
    expected = F.pad(torch.arange(n).float()[None, None, :], (p, p), mode="reflect")[0, 0].long()
    assert torch.equal(batches._reflect(torch.arange(-p, n + p), n), expected)
    ds = _ramp_dataset(8, 8)
    ds = sets.DataSplits("bright", *(sets.Split(s.images + 10, s.labels) for s in (ds.train, ds.minival, ds.test)),
                      2, (0.0,) * 3, (1 / 255,) * 3, 8, 8)
    crops = {mode: batches.Batcher(ds, device=torch.device("cpu"), augment="crop", crop_padding=0.25,
                                padding_mode=mode).crop(ds.train.images.expand(64, -1, -1, -1),
                                                              torch.Generator().manual_seed(0))
             for mode in ("zero", "reflect")}
    assert (crops["zero"] == 0).any() and not (crops["reflect"] == 0).any()  # no black border


def test_every_data_set_the_schema_allows_has_a_loader_and_a_config_group():
    """config.DATASETS (what validation accepts), the loaders of study.data.sets and conf/data/
    name the same data sets: a name accepted but unloadable fails here, not in a sweep."""
    from pathlib import Path

    import yaml

    from study.settings.config import DATASETS

    conf = Path(__file__).resolve().parents[1] / "conf" / "data"
    groups = {yaml.safe_load(p.read_text())["name"]: p.stem for p in conf.glob("*.yaml")}
    assert set(sets._LOADERS) == set(DATASETS) == set(groups)
    assert all(name == stem for name, stem in groups.items())  # data=NAME selects data.name NAME
