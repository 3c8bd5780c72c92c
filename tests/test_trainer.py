"""The one training loop: recipe pieces, events, learning, and the NaN guard."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from study.data import batches, sets
from study.record.tracking import NullTracker
from study.settings.config import DataConfig, RecipeConfig, TrainerConfig
from study.train import models, recipe, trainer

CPU = torch.device("cpu")


def test_lr_warms_up_linearly_then_decays_by_cosine_to_zero():
    total, warm = 100, 10
    f = [recipe.lr_factor(s, total, warm) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[55] == pytest.approx(0.5, abs=0.01)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[-1] < 0.01
    assert recipe.peak_lr(RecipeConfig(batch_size=512, lr_per_256=0.1)) == pytest.approx(0.2)
    assert recipe.warmup_steps(RecipeConfig(epochs=10, warmup_epochs=1.0), 100) == 100
    assert recipe.warmup_steps(RecipeConfig(epochs=1, warmup_epochs=1.0), 100) == 20  # capped


def test_weight_decay_skips_batch_norm_and_biases():
    model = models.build_model(14, 0.25, num_classes=10)
    groups = recipe.param_groups(model, 4e-5)
    decay, no_decay = (next(g for g in groups if (g["weight_decay"] > 0) == want) for want in (True, False))
    bn_ids = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    assert bn_ids and bn_ids <= {id(p) for p in no_decay["params"]}
    assert all(p.ndim > 1 for p in decay["params"]) and decay["weight_decay"] == 4e-5
    everything = recipe.param_groups(model, 4e-5, everything=True)  # recipe.decay_norm_and_bias
    assert len(everything) == 1 and bn_ids <= {id(p) for p in everything[0]["params"]}
    opt = recipe.make_optimizer(model, RecipeConfig())
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9


def _fit(model=None, epochs=3, **trainer_kw):
    ds = sets.prepare(DataConfig(name="synthetic", resolution=12, synthetic_images=600))
    model = model or models.build_model(14, 0.25, num_classes=ds.num_classes, in_chans=3)
    batcher = batches.Batcher(ds, device=CPU, augment="flip_crop", crop_padding=0.125)
    sink = NullTracker()
    sink.start_point("t", {}, {"point_key": "k"})
    result = trainer.fit(model, ds, batcher, RecipeConfig(epochs=epochs, batch_size=32, warmup_epochs=0.5),
                         TrainerConfig(progress=False, **trainer_kw), seed=0, sink=sink, device=CPU)
    return result, sink.runs[-1]


def test_fit_learns_and_emits_one_event_per_epoch():
    result, run = _fit()
    assert [e for e, _ in run["epochs"]] == [1, 2, 3]
    for _, m in run["epochs"]:
        assert {"train/loss", "val/top1", "val/top5", "lr", "epoch_time_s"} <= m.keys()
    losses = [m["train/loss"] for _, m in run["epochs"]]
    assert losses[-1] < losses[0]
    assert result.metrics["top1"] > 0.3  # chance is 0.1
    assert result.metrics["error"] == pytest.approx(1 - result.metrics["top1"])
    for key in ("top5", "minival/top1", "train_time_s", "train_step_ms", "train_img_per_s"):
        assert math.isfinite(result.metrics[key]) and result.metrics[key] >= 0


def test_bf16_precision_trains():
    """The bf16 autocast path (GPUs'): on a CPU with oneDNN off, where torch's own bf16 kernels are
    sound on every CPU kind (oneDNN's are not: study.point.device)."""
    with torch.backends.mkldnn.flags(enabled=False):
        result, _ = _fit(epochs=1, precision="bf16")
    assert math.isfinite(result.metrics["top1"])


class NaNModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x.flatten(1)[:, :10] * self.w * float("nan")


def test_non_finite_loss_raises_diverged():
    with pytest.raises(trainer.DivergedError, match="nan"):
        _fit(model=NaNModel())


def test_same_seed_repeats_metrics_exactly_in_deterministic_mode():
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        torch.manual_seed(0)
        a, _ = _fit(epochs=1, deterministic=True)
        torch.manual_seed(0)
        b, _ = _fit(epochs=1, deterministic=True)
    finally:
        torch.use_deterministic_algorithms(False)
    assert a.metrics["top1"] == b.metrics["top1"]
    assert a.epoch_history[0]["train/loss"] == b.epoch_history[0]["train/loss"]
