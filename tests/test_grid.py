"""The point-key contract (study/settings/grid.py): golden keys, what changes a key and what never does,
and the key-version-0 keys of stores written before the contract."""
from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
import torch

from study.settings import config, grid
from study.settings.config import RecipeConfig
from tests.conftest import TINY, compose_cfg
from study.settings import hardware

SMOKE_POINT = ["model.width=0.25", "model.depth=14", "data.resolution=12", "recipe.epochs=1",
               "data.synthetic_images=400", "trainer.latency_repeats=2"]


def point(name: str = "config", overrides: list[str] = ()) -> config.StudyConfig:
    """The point as it trains on a CPU, where precision auto is fp32 (the golden keys were typed on
    an AVX2 one; since then auto is fp32 on every CPU)."""
    study = config.validate(compose_cfg(name, list(overrides)))
    precision = hardware.resolve_precision(study.trainer.precision, torch.device("cpu"), frozenset({"avx2"}))
    return replace(study, trainer=replace(study.trainer, precision=precision))


# Typed once from the code that introduced key version 1; a change here loses users' studies.
GOLDEN = [
    ([], "62ffdbd70c6b161e"),
    (TINY, "51a4aa8451c8fe80"),
    ([*TINY, "tune.trials=4"], "09c2bab2d3a7837c"),
    (["model.width=0.5", "model.depth=50", "data.resolution=20", "recipe.epochs=4"], "a2e82d2b6875ec52"),
]


@pytest.mark.parametrize("overrides,key", GOLDEN)
def test_golden_point_keys(overrides, key):
    assert grid.point_key(point("config", overrides)) == key


def test_untuned_point_key_ignores_the_tuning_block():
    base = grid.point_key(point("config", TINY))
    assert grid.point_key(point("config", [*TINY, "tune=short"])) == base
    assert grid.point_key(point("config", [*TINY, "tune.sampler_seed=5", "tune.pruner=none"])) == base
    assert grid.point_key(point("config", [*TINY, "tune.storage=postgresql://u:p@h/db"])) == base


def test_tuned_point_key_follows_the_search_but_never_its_storage():
    tuned = grid.point_key(point("config", [*TINY, "tune.trials=4"]))
    assert tuned != grid.point_key(point("config", TINY))
    assert grid.point_key(point("config", [*TINY, "tune.trials=4", "tune=short"])) != tuned
    assert grid.point_key(point("config", [*TINY, "tune.trials=4", "tune.storage=sqlite:///x.db"])) == tuned


def test_seeds_share_the_point_key_and_differ_in_run_key():
    a, b = point("config", TINY), point("config", [*TINY, "seed=1"])
    assert grid.point_key(a) == grid.point_key(b) and grid.run_key(a) != grid.run_key(b)


def test_where_and_how_fast_a_point_runs_is_not_its_identity():
    base = grid.point_key(point("config", TINY))
    for override in ("trainer.threads=1", "trainer.channels_last=false", "trainer.latency_repeats=9",
                     "sweep=other", "trainer.checkpoints=false", "tracking.retry_s=5"):
        assert grid.point_key(point("config", [*TINY, override])) == base, override
    assert grid.point_key(point("config", [*TINY, "recipe.weight_decay=1e-4"])) != base


@dataclass(frozen=True)
class RecipeOfALaterVersion(RecipeConfig):
    mixup: float = 0.0  # a setting a later version adds; 0 trains what was trained before


def test_a_setting_added_later_keeps_every_key_at_its_neutral_value(monkeypatch):
    study = point("config", TINY)
    later = replace(study, recipe=RecipeOfALaterVersion(**vars(study.recipe)))
    monkeypatch.setitem(grid.ADDED, "recipe.mixup", 0.0)
    assert grid.point_key(later) == grid.point_key(study) == "51a4aa8451c8fe80"
    assert grid.legacy_run_key(later) == grid.legacy_run_key(study)
    changed = replace(later, recipe=replace(later.recipe, mixup=0.2))
    assert grid.point_key(changed) != grid.point_key(study) and grid.legacy_run_key(changed) is None


def test_every_semantic_setting_is_placed_in_the_key_contract():
    """A new schema field must be named in grid.KEYED (never: that changes every key),
    grid.ADDED with its neutral value, or grid.NON_SEMANTIC."""
    study = point("config", [*TINY, "tune.trials=2"])
    unplaced = set(grid.semantic_settings(study)) - grid.KEYED - grid.TUNE_KEYED - set(grid.ADDED) - {"seed"}
    assert not unplaced, f"add these to grid.ADDED with their neutral value: {sorted(unplaced)}"


def test_key_version_0_of_a_store_written_before_the_contract():
    # tests/data/store_v0.db.gz holds this point under this run key (written by key version 0)
    assert grid.legacy_run_key(point("smoke", SMOKE_POINT)) == "fafffd1db287f490-s0"


def test_redefined_depths_carry_their_layout_and_have_no_version_0_key():
    deep = point("config", [*TINY, "model.depth=300"])
    assert grid.keyed_settings(deep)["model.blocks_per_stage"] == [4, 36, 54, 4]
    assert grid.legacy_run_key(deep) is None  # its old runs trained the interpolated layout
    assert "model.blocks_per_stage" not in grid.keyed_settings(point("config", TINY))


def test_the_ema_reference_batch_is_keyed_only_where_it_changes_the_training():
    base = grid.point_key(point("config", TINY))  # EMA off
    assert grid.point_key(point("config", [*TINY, "recipe.ema_reference_batch=256"])) == base
    ema = [*TINY, "recipe.ema_decay=0.999"]
    per_images = grid.keyed_settings(point("config", ema))
    assert per_images["recipe.ema_reference_batch"] == 4096  # batch 32 != 4096: keyed
    per_step = point("config", [*ema, "recipe.ema_reference_batch=null"])
    assert "recipe.ema_reference_batch" not in grid.keyed_settings(per_step)
    assert grid.legacy_run_key(per_step) is not None and grid.legacy_run_key(point("config", ema)) is None


def test_expand_lists_the_jobs_hydras_basic_sweeper_launches_in_its_order(tmp_path):
    """grid.expand goes through Hydra's BasicSweeper (hydra._internal, not a public API): this
    pins it to what a real `--multirun` launches, so an upgrade of hydra-core that changes the
    jobs or their order fails here."""
    import json
    import subprocess
    import sys

    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "app.yaml").write_text(
        "a: 0\nb: 0\nc: x\nhydra:\n  sweeper:\n    params:\n      a: 1,2\n      c: x,y,z\n")
    (tmp_path / "app.py").write_text(
        "import json, hydra\nfrom hydra.core.hydra_config import HydraConfig\n"
        "@hydra.main(version_base=None, config_path='conf', config_name='app')\n"
        "def main(cfg):\n    print('JOB', json.dumps(list(HydraConfig.get().overrides.task)))\n"
        "main()\n")
    done = subprocess.run([sys.executable, "app.py", "--multirun", "b=5,6", f"hydra.sweep.dir={tmp_path}/multirun"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    launched = [json.loads(line[4:]) for line in done.stdout.splitlines() if line.startswith("JOB ")]
    assert launched == grid.expand({"a": "1,2", "c": "x,y,z"}, ["b=5,6"])
    assert len(launched) == 12
