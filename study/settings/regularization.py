"""Regularization that grows with the model: the released ResNet-RS configs' rules, as
OmegaConf resolvers that conf/recipe/resnet_rs.yaml applies to the composed point.

    dropout: ${rs_dropout:${model.depth},${data.resolution},${model.width},${recipe.dropout_width_slope}}
    stochastic_depth: ${rs_stochastic_depth:${model.depth}}
    randaugment_magnitude: ${rs_randaugment_magnitude:${data.resolution}}

A setting given explicitly (recipe.dropout=0.3) replaces its rule. The resolved values are
what the point key and the run record hold.
"""
from __future__ import annotations

import math

from omegaconf import OmegaConf

# The released configs (tensorflow/tpu resnet_rs/configs, Keras ResNetRS*): dropout 0.25,
# 0.4 for RS-350@320 and RS-420@320.
LARGE_DROPOUT = (350, 320, 0.4)   # from this depth and resolution on
DROPOUT = 0.25
# Stochastic depth 0 up to RS-152, 0.1 from RS-200 on.
STOCHASTIC_DEPTH = (200, 0.1)
# RandAugment magnitude (TF's 0-10 scale, above 10 extrapolates): 10 at 160 px, 15 from
# 192 px. Small images (the paper has none) get 5 below 64 px: RandAugment's CIFAR-10
# search settled on magnitudes of 4-5 for Wide-ResNets, and a shift or shear of a fixed
# fraction removes more of what a 32 px image shows. 64-191 px follow the 160 px value.
RANDAUGMENT_MAGNITUDE = ((192, 15.0), (64, 10.0), (0, 5.0))


# Width: in its 350-epoch scaling study the paper raised dropout with the width multiplier, but
# gives no values. Here dropout grows by `recipe.dropout_width_slope` (default 0.1) per doubling
# of the width above 1 (2x: +0.1, 4x: +0.2), capped at MAX_DROPOUT; widths up to 1 keep the
# depth rule. Why 0.1: the released configs' own step for a larger model is +0.15 (0.25 -> 0.4
# for RS-350/420 at 320 px, about 1.9x the FLOPs of RS-350 at 256 px); a 2x width is ~4x the
# FLOPs of its base but keeps its depth, and 0.1 per doubling puts a 2x-wide model between the
# two. A defensible default, not the paper's number: sweep it (recipe.dropout_width_slope) where
# it matters.
MAX_DROPOUT = 0.5


def dropout(depth: int, resolution: int, width: float = 1.0, width_slope: float = 0.1) -> float:
    depth_from, resolution_from, rate = LARGE_DROPOUT
    base = rate if depth >= depth_from and resolution >= resolution_from else DROPOUT
    return round(min(MAX_DROPOUT, base + width_slope * max(0.0, math.log2(width))), 4)


def stochastic_depth(depth: int) -> float:
    depth_from, rate = STOCHASTIC_DEPTH
    return rate if depth >= depth_from else 0.0


def randaugment_magnitude(resolution: int) -> float:
    return next(m for from_px, m in RANDAUGMENT_MAGNITUDE if resolution >= from_px)


def register_resolvers() -> None:
    for name, fn in (("rs_dropout", dropout), ("rs_stochastic_depth", stochastic_depth),
                     ("rs_randaugment_magnitude", randaugment_magnitude)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
