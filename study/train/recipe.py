"""The training recipe: optimizer, learning-rate schedule and loss (ResNet-RS, Bello et al. 2021).

- SGD with Nesterov momentum 0.9; lr = lr_per_256 x batch / 256 (Goyal et al. linear scaling).
- Weight decay on convolution and linear weights only, not on batch-norm parameters or
  biases (the released ResNet-RS configs).
- Linear warm-up from 0 over `warmup_epochs`, then cosine decay to 0 (paper, Table 1), or
  the baseline's step decay (x step_gamma at fractions of the run). The paper warms up 5 of
  350 epochs; for short budgets the warm-up is capped at WARMUP_CAP of the run, so a 1-epoch
  point still spends most of its steps at and after the peak lr.
- Cross-entropy with label smoothing.
- Weight EMA over every parameter and buffer, batch-norm statistics included (the released
  configs' 0.9999 at batch 4096). The decay is defined per images seen: per step it is
  ema_decay^(batch / ema_reference_batch) (ema_step_decay), so at batch 128 the EMA still spans
  the paper's ~41M images, not 32 times fewer. At step t the decay is
  min(step decay, (1 + t) / (10 + t), cap): TF's
  warm-up, and a cap so that the EMA's horizon 1 / (1 - decay) is at most `ema_horizon` of
  the run's steps. The paper's 0.9999 is a 10,000-step horizon over ~109,000 steps (350
  epochs of 1.28M images at batch 4096), about 9%; the default 0.1 keeps that proportion,
  so a 100-step run averages over its last ~10 steps instead of its initial weights.
"""
from __future__ import annotations

import math

import torch
from timm.optim import param_groups_weight_decay
from timm.utils import ModelEmaV3
from torch import nn

from study.settings.config import RecipeConfig


WARMUP_CAP = 0.2  # the longest warm-up, as a fraction of all steps


def warmup_steps(recipe: RecipeConfig, steps_per_epoch: int) -> int:
    return round(min(recipe.warmup_epochs, WARMUP_CAP * recipe.epochs) * steps_per_epoch)


def peak_lr(recipe: RecipeConfig) -> float:
    return recipe.lr_per_256 * recipe.batch_size / 256  # linear scaling rule


def param_groups(model: nn.Module, weight_decay: float, everything: bool = False) -> list[dict]:
    """Decay only tensors of rank > 1 (conv and linear weights): timm's rule (biases and
    batch-norm parameters in a group without decay); with `everything`, every parameter."""
    if everything:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    return param_groups_weight_decay(model, weight_decay)


def make_optimizer(model: nn.Module, recipe: RecipeConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(param_groups(model, recipe.weight_decay, recipe.decay_norm_and_bias), lr=peak_lr(recipe),
                           momentum=recipe.momentum, nesterov=recipe.nesterov and recipe.momentum > 0)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str = "cosine",
              milestones: list[float] = (), gamma: float = 0.1) -> float:
    """Multiplier of the peak lr at `step` (0-based): linear warm-up, then cosine to 0, or
    x gamma at each milestone (a fraction of all steps) passed."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "step":
        return gamma ** sum(step >= m * total_steps for m in milestones)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_schedule(optimizer: torch.optim.Optimizer, recipe: RecipeConfig,
                  steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per optimizer step."""
    total = recipe.epochs * steps_per_epoch
    warmup = warmup_steps(recipe, steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, total, warmup, recipe.schedule, recipe.step_milestones, recipe.step_gamma))


def make_loss(recipe: RecipeConfig) -> nn.Module:
    return nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)


def ema_step_decay(recipe: RecipeConfig) -> float:
    """The EMA decay per optimizer step: recipe.ema_decay is given per `ema_reference_batch`
    images, so the horizon in images, batch / (1 - decay), is the same at any batch."""
    if recipe.ema_reference_batch is None:
        return recipe.ema_decay
    return recipe.ema_decay ** (recipe.batch_size / recipe.ema_reference_batch)


def ema_decay_at(step: int, decay: float, total_steps: int, horizon: float) -> float:
    """The EMA decay at 0-based `step` (see the module docstring)."""
    cap = 1 - 1 / max(1.0, horizon * total_steps)
    return min(decay, (1 + step) / (10 + step), cap)


class _ScheduledEma(ModelEmaV3):
    """timm's EMA (every floating parameter and buffer lerped, other buffers copied) with the
    decay schedule above."""

    def __init__(self, model: nn.Module, decay: float, total_steps: int, horizon: float):
        super().__init__(model, decay=decay)
        self.total_steps, self.horizon = total_steps, horizon

    def get_decay(self, step: int | None = None) -> float:
        return ema_decay_at(step or 0, self.decay, self.total_steps, self.horizon)


class WeightEma:
    """An exponential moving average of a model's parameters and buffers (batch-norm running
    statistics included; integer buffers such as batch counters are copied), on timm's
    ModelEmaV3. `model` is the averaged copy, `step` the updates so far (checkpointed)."""

    def __init__(self, model: nn.Module, decay: float, total_steps: int, horizon: float):
        self.source, self.step = model, 0
        self._ema = _ScheduledEma(model, decay, total_steps, horizon)
        self.model = self._ema.module.requires_grad_(False)

    def update(self) -> None:
        """Blend in the source model's current weights (call after each optimizer step)."""
        self._ema.update(self.source, self.step)
        self.step += 1
