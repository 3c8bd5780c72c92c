"""The recipes by regime: schedules, weight EMA, RandAugment, and regularization that grows
with the model, as composed from conf/recipe/."""
from __future__ import annotations

import pytest
import torch

from study.data import augment
from study.settings import config, regularization
from study.settings.config import RecipeConfig
from study.train import models, recipe
from tests.conftest import compose_cfg


def test_step_schedule_decays_tenfold_at_epochs_30_60_80_of_90():
    total = 90 * 10
    f = [recipe.lr_factor(s, total, 0, "step", [1 / 3, 2 / 3, 8 / 9], 0.1) for s in range(total)]
    assert f[299] == 1.0 and f[300] == pytest.approx(0.1)
    assert f[599] == pytest.approx(0.1) and f[600] == pytest.approx(0.01)
    assert f[799] == pytest.approx(0.01) and f[800] == pytest.approx(0.001)


def test_ema_decay_warms_up_like_tf_and_is_capped_by_the_horizon():
    # TF's warm-up: (1 + t) / (10 + t) below the configured decay.
    assert recipe.ema_decay_at(0, 0.9999, 10**6, 0.1) == pytest.approx(0.1)
    assert recipe.ema_decay_at(90, 0.9999, 10**6, 0.1) == pytest.approx(0.91)
    assert recipe.ema_decay_at(10**6, 0.9999, 10**6, 0.1) == 0.9999  # the paper's long run: uncapped
    # A 200-step run averages over at most 20 steps: 1 - 1/20.
    assert recipe.ema_decay_at(10**4, 0.9999, 200, 0.1) == pytest.approx(0.95)


def test_weight_ema_averages_weights_and_batch_norm_statistics():
    model = models.build_model(14, 0.25, num_classes=10)
    ema = recipe.WeightEma(model, 0.5, total_steps=10**6, horizon=1.0)
    ema.step = 10**6  # past the warm-up: decay 0.5
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    ema_bn = next(m for m in ema.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():
        bn.running_mean.fill_(2.0)
        bn.weight.fill_(3.0)
    ema.update()
    assert torch.allclose(ema_bn.running_mean, torch.full_like(bn.running_mean, 1.0))  # (0 + 2) / 2
    assert torch.allclose(ema_bn.weight, torch.full_like(bn.weight, 2.0))              # (1 + 3) / 2
    assert ema_bn.num_batches_tracked == bn.num_batches_tracked
    assert not any(p.requires_grad for p in ema.model.parameters())


def _images(n=64, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def test_randaugment_transforms_each_image_on_its_own_and_repeats_with_the_seed():
    x = _images()
    a = augment.rand_augment(x, 2, 10, torch.Generator().manual_seed(1))
    b = augment.rand_augment(x, 2, 10, torch.Generator().manual_seed(1))
    c = augment.rand_augment(x, 2, 10, torch.Generator().manual_seed(2))
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Per image, not per batch: some images come out unchanged (identity or auto-contrast on
    # full-range noise drawn twice) while the others change.
    changed = (a != x).flatten(1).any(dim=1)
    assert 0 < changed.sum() < len(x)
    assert torch.equal(x, augment.rand_augment(x, 0, 10, torch.Generator()))


@pytest.mark.parametrize("op", augment.OPS)
def test_every_randaugment_op_keeps_uint8_images_and_grey_images_work(op):
    for chans in (3, 1):
        x = _images(8, 12)[:, :chans].contiguous()
        y = augment.apply_op(x, op, 15.0, -1.0)
        assert y.shape == x.shape and y.dtype == torch.uint8
        if op in ("rotate", "shear_x", "translate_y", "posterize", "solarize", "brightness"):
            assert not torch.equal(x, y), op


@pytest.mark.parametrize("depth,resolution,dropout,sd,magnitude", [
    (50, 160, 0.25, 0.0, 10), (152, 256, 0.25, 0.0, 15), (200, 256, 0.25, 0.1, 15),
    (350, 256, 0.25, 0.1, 15), (350, 320, 0.4, 0.1, 15), (420, 320, 0.4, 0.1, 15), (26, 32, 0.25, 0.0, 5)])
def test_resnet_rs_regularization_grows_with_the_model(depth, resolution, dropout, sd, magnitude):
    study = config.validate(compose_cfg("config", ["recipe=resnet_rs", f"model.depth={depth}",
                                                   f"data.resolution={resolution}"]))
    r = study.recipe
    assert (r.dropout, r.stochastic_depth, r.randaugment_magnitude) == (dropout, sd, magnitude)
    assert r.randaugment_ops == 2 and r.ema_decay == 0.9999 and r.label_smoothing == 0.1
    assert r.weight_decay == 4e-5 and r.schedule == "cosine" and r.stochastic_depth_rule == "stage"
    assert regularization.dropout(depth, resolution) == dropout


def test_an_explicit_setting_replaces_its_rule():
    study = config.validate(compose_cfg("config", ["recipe=resnet_rs", "model=resnetrs420", "recipe.dropout=0.1"]))
    assert study.recipe.dropout == 0.1 and study.recipe.stochastic_depth == 0.1


def test_short_and_baseline_recipes_have_none_of_the_extra_regularizers():
    for name, wd, schedule in (("short", 4e-5, "cosine"), ("baseline", 1e-4, "step")):
        r = config.validate(compose_cfg("config", [f"recipe={name}"])).recipe
        assert (r.weight_decay, r.schedule) == (wd, schedule), name
        assert r.label_smoothing == r.dropout == r.stochastic_depth == r.ema_decay == 0 and r.randaugment_ops == 0
    assert config.validate(compose_cfg("config", ["recipe=baseline"])).recipe.epochs == 90


def test_the_ladder_adds_one_change_per_rung():
    from study.settings.config import flatten

    rungs = sorted(p.stem for p in (config.Path(config.project_root()) / "conf" / "ladder").glob("*.yaml"))
    states = [flatten(config.validate(compose_cfg("recipe_ablation", [f"ladder={r}"])))
              for r in rungs]
    for before, after, rung in zip(states, states[1:], rungs[1:]):
        changed = {k for k in before if before[k] != after[k]} - {"recipe.randaugment_magnitude", "data.eval_crop"}
        assert len(changed) == 1, (rung, changed)
    assert states[0]["recipe.schedule"] == "step" and states[-1]["model.resnet_d"]


def test_minival_is_two_percent_by_default(tmp_path):
    assert config.DataConfig().minival_fraction == 0.02
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"an image folder needs an image")
    for name in ("cifar10", "cifar100", "image_folder"):
        study = config.validate(compose_cfg("config", [f"data={name}", f"data.root={tmp_path}"]))
        assert study.data.minival_fraction == 0.02


def test_ema_spans_the_same_images_at_batch_128_and_4096():
    from study.settings.config import RecipeConfig

    def horizon_images(batch):
        decay = recipe.ema_step_decay(RecipeConfig(batch_size=batch, ema_decay=0.9999))
        return batch / (1 - decay)

    assert horizon_images(128) == pytest.approx(horizon_images(4096), rel=0.01)
    assert horizon_images(4096) == pytest.approx(4096 / 1e-4, rel=1e-6)  # the paper's 0.9999 per step
    legacy = RecipeConfig(batch_size=128, ema_decay=0.9999, ema_reference_batch=None)
    assert recipe.ema_step_decay(legacy) == 0.9999  # per step, as before the setting existed


@pytest.mark.parametrize("depth,resolution,width,expected", [
    (50, 160, 1.0, 0.25), (50, 160, 0.5, 0.25), (50, 160, 2.0, 0.35), (50, 160, 4.0, 0.45),
    (350, 320, 1.0, 0.4), (350, 320, 2.0, 0.5), (350, 320, 4.0, 0.5)])
def test_dropout_grows_with_width_under_the_resnet_rs_rule(depth, resolution, width, expected):
    from study.settings import regularization

    assert regularization.dropout(depth, resolution, width) == pytest.approx(expected)


def test_the_resnet_rs_recipe_records_the_width_rule_it_applied():
    from study.settings import config
    from tests.conftest import compose_cfg

    study = config.validate(compose_cfg("config", ["recipe=resnet_rs", "model.depth=50", "model.width=2.0",
                                                   "data.resolution=160", "recipe.dropout_width_slope=0.2"]))
    assert study.recipe.dropout == pytest.approx(0.45) and study.recipe.dropout_width_slope == 0.2
