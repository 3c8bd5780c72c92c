"""A point's identity covers what it trained on (study/settings/identity.py): an image folder's
contents, never its path. Two folders with other images under one sweep name are two points,
the same folder at another path is one point, a folder that cannot be read is refused before
training, and runs recorded before fingerprints are reused only for the data they trained on."""
from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

from study.point import device as devices
from study.point.lifecycle import run_point
from study.record.tracking import NullTracker
from study.settings import config, grid, identity
from study.settings.config import ConfigError
from tests.conftest import compose_cfg
from tests.test_stream import image_folder

CPU = torch.device("cpu")
SMALL = ["data=image_folder", "data.resolution=12", "model.depth=14", "model.width=0.25", "recipe.epochs=1",
         "recipe.batch_size=32", "trainer.latency_repeats=2", "trainer.progress=false", "sweep=same"]


def point(root, *extra: str) -> config.StudyConfig:
    return devices.resolve(config.validate(compose_cfg("config", [*SMALL, f"data.root={root}", *extra])), CPU)


def relabelled(source, dest):
    """A copy of `source` with every class's images moved to the next class's folder: the same
    file names and sizes under other labels."""
    shutil.copytree(source, dest)
    for split in ("train", "val"):
        classes = sorted((dest / split).iterdir())
        for c in classes:
            c.rename(c.with_name(c.name + ".old"))
        for i, c in enumerate(classes):
            c.with_name(c.name + ".old").rename(classes[(i + 1) % len(classes)])
    return dest


def test_other_images_are_another_point_and_the_same_images_elsewhere_the_same_point(tmp_path, study_home):
    a = image_folder(tmp_path / "a", classes=3, per_class=24)
    b = relabelled(a, tmp_path / "b")
    moved = shutil.copytree(a, tmp_path / "mounted" / "elsewhere")
    assert point(a).data.fingerprint.startswith("files:")
    assert grid.point_key(point(a)) != grid.point_key(point(b))
    assert grid.point_key(point(moved)) == grid.point_key(point(a))
    assert "data.root" not in grid.keyed_settings(point(a)) and "data.fingerprint" in grid.keyed_settings(point(a))

    tracker, lines = NullTracker(), []
    assert run_point(point(a), tracker=tracker, device=CPU, echo=lines.append)["status"] == "FINISHED"
    assert run_point(point(b), tracker=tracker, device=CPU, echo=lines.append)["status"] == "FINISHED", lines
    assert run_point(point(moved), tracker=tracker, device=CPU, echo=lines.append)["status"] == "SKIPPED"
    assert [r["params"]["data.fingerprint"] for r in tracker.runs] == [point(a).data.fingerprint,
                                                                        point(b).data.fingerprint]
    assert tracker.runs[0]["tags"]["data.root"] == str(a.resolve())


def test_the_fingerprint_is_cached_beside_the_data_and_sees_an_image_move(tmp_path):
    a = image_folder(tmp_path / "a", classes=2, per_class=8)
    first = point(a).data.fingerprint
    assert (a / identity.CACHE_FILE).is_file()
    assert point(a).data.fingerprint == first
    image = next((a / "train" / "n00000000").iterdir())
    image.rename(a / "train" / "n00000001" / image.name)  # one label changed
    assert point(a).data.fingerprint != first


def test_named_sets_have_no_fingerprint_and_keep_their_keys():
    study = config.validate(compose_cfg("config", []))
    assert study.data.fingerprint is None and "data.fingerprint" not in grid.keyed_settings(study)


def test_a_folder_that_cannot_be_read_is_refused_naming_data_root(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "no_images" / "cat").mkdir(parents=True)
    (tmp_path / "no_images" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(ConfigError, match=r"data.root='.*empty': the folder no class sub-folders found"):
        point(tmp_path / "empty")
    with pytest.raises(ConfigError, match=r"data.root='.*no_images': the folder holds no images"):
        point(tmp_path / "no_images")


def _recorded_before_fingerprints(tracker: NullTracker, study: config.StudyConfig, root) -> None:
    """A FINISHED run as a version without fingerprints recorded it: the key without one, the
    folder only in its resolved config."""
    bare = dataclasses.replace(study, data=dataclasses.replace(study.data, fingerprint=None))
    run_key = grid.run_key(bare)
    tracker.start_point("old", {}, {"run_key": run_key, "point_key": grid.point_key(bare)})
    tracker.finish_point({"top1": 0.5}, {"config.yaml": f"data:\n  name: image_folder\n  root: {root}\n"})


def test_a_run_from_before_fingerprints_is_reused_only_for_the_data_it_trained_on(tmp_path, study_home):
    a = image_folder(tmp_path / "a", classes=3, per_class=24)
    b = relabelled(a, tmp_path / "b")
    tracker, lines = NullTracker(), []
    _recorded_before_fingerprints(tracker, point(a), a)
    # the same settings on other data: reported, not reused
    assert run_point(point(b), tracker=tracker, device=CPU, echo=lines.append)["status"] == "FINISHED"
    assert any("before data fingerprints trained on" in line and "not reused" in line for line in lines), lines
    # its own folder at hand: taken over, the point is not trained again
    lines.clear()
    assert run_point(point(a), tracker=tracker, device=CPU, echo=lines.append)["status"] == "SKIPPED", lines
    assert tracker.runs[0]["tags"]["point_key"] == grid.point_key(point(a))
    assert tracker.runs[0]["params"]["data.fingerprint"] == point(a).data.fingerprint
    # its folder gone: reported, never silently reused
    gone = image_folder(tmp_path / "gone", classes=3, per_class=24)
    c = shutil.copytree(gone, tmp_path / "c")
    tracker2, lines = NullTracker(), []
    _recorded_before_fingerprints(tracker2, point(c), gone)
    shutil.rmtree(gone)
    assert run_point(point(c), tracker=tracker2, device=CPU, echo=lines.append)["status"] == "FINISHED"
    assert any(str(gone) in line and "not reused" in line for line in lines), lines
