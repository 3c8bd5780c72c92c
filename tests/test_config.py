"""Every config option and every sweep composes and validates; bad values are rejected
with a message naming the setting, before anything is built and without creating a run."""
from __future__ import annotations

import re
import sqlite3
from dataclasses import replace

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from study.settings import config, grid
from study.settings.config import ConfigError
from tests.conftest import CONF, SWEEPS, TINY, compose_cfg, run_cli
from study.sweep import compose as compose_mod

GROUP_OPTIONS = [(g.name, f.stem) for g in sorted(CONF.iterdir()) if g.is_dir()
                 for f in sorted(g.glob("*.yaml"))]
SWEEP_FILES = sorted(p.stem for p in SWEEPS.glob("*.yaml"))
FOLDER_SETS = {"image_folder", "cifar10", "cifar100"}
ADDED_GROUPS = {"ladder", "regime"}  # not in the primary defaults list: selected with +group=option


def _folder(tmp_path):
    """A folder any data set accepts: one class sub-folder holding one image file."""
    (tmp_path / "a").mkdir(exist_ok=True)
    (tmp_path / "a" / "x.png").write_bytes(b"not decoded here")
    return tmp_path


@pytest.mark.parametrize("group,option", GROUP_OPTIONS)
def test_every_group_option_composes(group, option, tmp_path):
    extra = [f"data.root={_folder(tmp_path)}"] if option in FOLDER_SETS else []
    if group == "ladder":
        extra += ["+vars.short_epochs=2", "+vars.long_epochs=8"]
    choice = f"+{group}={option}" if group in ADDED_GROUPS else f"{group}={option}"
    study = config.validate(compose_cfg("config", [choice, *extra]))
    assert isinstance(study, config.StudyConfig)


def test_default_config_is_the_offline_mnist_sample():
    study = config.validate(compose_cfg())
    assert study.data.name == "mnist" and study.sweep == "adhoc"
    assert study.tracking.uri.startswith("sqlite:////"), "default store must be an absolute path"


@pytest.fixture
def sweep_compose(monkeypatch):
    """The sweep callback's Hydra composition, outside the CLI: through compose_cfg."""
    monkeypatch.setattr(compose_mod, "compose", lambda name, overrides: compose_cfg(name, overrides))


@pytest.mark.parametrize("name", SWEEP_FILES)
def test_every_sweep_composes_and_every_point_validates(name, sweep_compose, tmp_path):
    needs_folder = compose_cfg(name).data.name in FOLDER_SETS
    task = [f"data.root={_folder(tmp_path)}"] if needs_folder else []
    cfg = compose_cfg(name, task, hydra_cfg=True)
    assert cfg.sweep == name, "a sweep file records under its own name"
    jobs = grid.expand(dict(cfg.hydra.sweeper.params), task)
    assert len(jobs) >= 1
    from study.sweep.compose import validate_grid

    keys = {grid.run_key(study) for study in validate_grid(cfg, jobs)}
    assert len(keys) == len(jobs), "every grid point must be distinct"


def test_smoke_and_default_sizes():
    smoke = grid.expand(dict(compose_cfg("smoke", hydra_cfg=True).hydra.sweeper.params), [])
    assert len(smoke) <= 8
    params = compose_cfg("default", hydra_cfg=True).hydra.sweeper.params
    axes = {k: str(v).split(",") for k, v in params.items()}
    for axis in ("model.width", "model.depth", "data.resolution"):
        assert len(axes[axis]) >= 3, axis
    epochs = sorted(int(e) for e in axes["recipe.epochs"])
    assert len(epochs) >= 2 and epochs[-1] >= 4 * epochs[0]


BAD_VALUES = [
    ("model.width=0", "model.width"),
    ("model.width=-0.5", "model.width"),
    ("model.depth=42", "model.depth"),
    ("data.resolution=4", "data.resolution"),
    ("recipe.epochs=0", "recipe.epochs"),
    ("data.name=imagenet", "data.name"),
    ("recipe.warmup_epochs=-1", "recipe.warmup_epochs"),
    ("trainer.precision=fp8", "trainer.precision"),
    ("recipe.dropout=1.5", "recipe.dropout"),
    ("recipe.schedule=linear", "recipe.schedule"),
    ("recipe.step_milestones=[0.8,0.5]", "recipe.step_milestones"),
    ("recipe.randaugment_ops=9", "recipe.randaugment_ops"),
    ("recipe.ema_decay=1.0", "recipe.ema_decay"),
    ("recipe.stochastic_depth_rule=layer", "recipe.stochastic_depth_rule"),
]


@pytest.mark.parametrize("override,setting", BAD_VALUES)
def test_bad_values_name_the_setting_and_what_is_allowed(override, setting):
    with pytest.raises(ConfigError) as err:
        config.validate(compose_cfg("config", [override]))
    message = str(err.value)
    assert f"{setting}=" in message and ("must" in message)


def test_missing_data_folder_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="data.root.*does not exist"):
        config.validate(compose_cfg("config", ["data=image_folder", f"data.root={tmp_path}/nope"]))
    with pytest.raises(ConfigError, match="data.root.*download"):
        config.validate(compose_cfg("config", ["data=cifar10", f"data.root={tmp_path}/nope"]))


def test_unknown_group_option_and_key_fail_composition():
    with pytest.raises(MissingConfigException, match="data/imagenet"):
        compose_cfg("config", ["data=imagenet"])
    with pytest.raises(ConfigCompositionException, match="model.widht"):
        compose_cfg("config", ["model.widht=1"])


def test_wrong_type_fails_composition():
    with pytest.raises(ConfigCompositionException, match="model.width"):
        compose_cfg("config", ["model.width=wide"])


def _run_count(home) -> int:
    db = home / "mlflow.db"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as con:
        return con.execute("select count(*) from runs").fetchone()[0]


def test_sweep_with_one_bad_point_runs_nothing(study_home):
    result = run_cli("--multirun", "--config-dir", "sweeps", "--config-name", "smoke",
                     "model.width=0.25,-1", home=study_home)
    assert result.returncode == 2
    assert "model.width=-1.0: must be > 0" in result.stderr and "nothing was run" in result.stderr
    assert _run_count(study_home) == 0


def test_schema_is_frozen_after_validation():
    study = config.validate(compose_cfg())
    with pytest.raises(Exception):
        study.model.width = 2.0  # type: ignore[misc]
    assert OmegaConf.is_config(compose_cfg())


@pytest.mark.parametrize("name", SWEEP_FILES)
def test_fast_point_config_equals_hydra_composition(name, sweep_compose, tmp_path):
    from omegaconf import open_dict

    from study.sweep.compose import point_config

    task = [f"data.root={_folder(tmp_path)}"] if compose_cfg(name).data.name in FOLDER_SETS else []
    sweep_cfg = compose_cfg(name, task, hydra_cfg=True)
    base = sweep_cfg.copy()
    with open_dict(base):
        del base["hydra"]
    for job in grid.expand(dict(sweep_cfg.hydra.sweeper.params), [*task, "seed=1,2", "trainer.precision=bf16"])[:4]:
        assert config.validate(point_config(base, name, job)) == config.validate(compose_cfg(name, job))


def test_group_choices_in_a_grid_use_full_composition_once_each(monkeypatch):
    from omegaconf import open_dict

    base = compose_cfg("smoke", hydra_cfg=True).copy()
    with open_dict(base):
        del base["hydra"]
    calls = []
    monkeypatch.setattr(compose_mod, "compose", lambda name, overrides: calls.append(overrides) or base.copy())
    composed = {}
    for job in (["data=mnist"], ["+extra=1"], ["model.width=0.5", "recipe=resnet_rs"],
                ["model.width=1.0", "recipe=resnet_rs"]):
        compose_mod.point_config(base, "smoke", job, composed)
    assert calls == [["data=mnist"], ["+extra=1"], ["recipe=resnet_rs"]]




def _with_space(space: dict) -> config.StudyConfig:
    study = config.validate(compose_cfg("config", TINY))
    ranges = {k: config.SearchRange(**v) for k, v in space.items()}
    return replace(study, tune=replace(study.tune, trials=2, space=ranges))


@pytest.mark.parametrize("space,needle", [
    ({"recipe.dropout": {"low": 0.0, "high": 1.5}}, "the range leaves recipe.dropout's allowed values"),
    ({"recipe.weight_decay": {"low": -1.0, "high": 1e-3}}, "the range leaves recipe.weight_decay's allowed values"),
    ({"recipe.lr_per_256": {"low": 0.0, "high": 0.4, "log": True}}, "needs low < high (and low > 0 when log)"),
    ({"recipe.randaugment_ops": {"low": 0, "high": 3}}, "recipe.randaugment_ops is an integer setting"),
    ({"recipe.nesterov": {"low": 0, "high": 1}}, "must name a numeric setting"),
    ({"recipe.schedule": {"low": 0, "high": 1}}, "must name a numeric setting"),
    ({"trainer.threads": {"low": 1, "high": 2, "integer": True}}, "must name a setting"),
])
def test_tuning_ranges_are_checked_against_the_schema_when_loaded(space, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        config.validate(_with_space(space))


def test_tuned_values_are_cast_to_their_settings_types_and_validated():
    study = config.validate(compose_cfg("config", TINY))
    assert config.override(study, {"recipe.randaugment_ops": 3.0}).recipe.randaugment_ops == 3
    assert config.override(study, {"data.max_train_images": 100.0}).data.max_train_images == 100  # Optional[int]
    assert type(config.override(study, {"recipe.dropout": 0}).recipe.dropout) is float
    for bad in ({"recipe.randaugment_ops": 2.5}, {"recipe.nesterov": 0.3}, {"recipe.schedule": 1.0}):
        with pytest.raises(ConfigError):
            config.override(study, bad)
    from study.train import tune
    with pytest.raises(ConfigError, match=re.escape("recipe.dropout=1.2: must be in [0, 1)")):
        tune.apply(study, {"recipe.dropout": 1.2})
