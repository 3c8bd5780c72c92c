"""The training recipe: optimizer, learning-rate schedule and loss (ResNet-RS, Bello et al. 2021).

- SGD with Nesterov momentum 0.9; lr = lr_per_256 x batch / 256 (Goyal et al. linear scaling).
- Weight decay on convolution and linear weights only, not on batch-norm parameters or
  biases (the released ResNet-RS configs).
- Linear warm-up from 0 over `warmup_epochs`, then cosine decay to 0 (paper, Table 1). The
  paper warms up 5 of 350 epochs; for short budgets the warm-up is capped at WARMUP_CAP of
  the run, so a 1-epoch point still spends most of its steps at and after the peak lr.
- Cross-entropy with label smoothing.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from study.config import RecipeConfig


WARMUP_CAP = 0.2  # the longest warm-up, as a fraction of all steps


def warmup_steps(recipe: RecipeConfig, steps_per_epoch: int) -> int:
    return round(min(recipe.warmup_epochs, WARMUP_CAP * recipe.epochs) * steps_per_epoch)


def peak_lr(recipe: RecipeConfig) -> float:
    return recipe.lr_per_256 * recipe.batch_size / 256  # linear scaling rule


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay only tensors of rank > 1 (conv and linear weights)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, recipe: RecipeConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(param_groups(model, recipe.weight_decay), lr=peak_lr(recipe),
                           momentum=recipe.momentum, nesterov=recipe.nesterov and recipe.momentum > 0)


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the peak lr at `step` (0-based): linear warm-up, then cosine to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_schedule(optimizer: torch.optim.Optimizer, recipe: RecipeConfig,
                  steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per optimizer step."""
    total = recipe.epochs * steps_per_epoch
    warmup = warmup_steps(recipe, steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup))


def make_loss(recipe: RecipeConfig) -> nn.Module:
    return nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
