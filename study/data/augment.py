"""RandAugment (Cubuk et al. 2020) on uint8 batches, on the training device, per image.

Each image gets `ops` operations, each drawn uniformly from OPS, applied with magnitude M
on TF's 0-10 scale (the scale of the paper's "magnitude 10 / 15"; values above 10
extrapolate, as in TF). Signed operations (rotate, shear, translate, the enhancers) get a
random sign per image. Images that drew the same (operation, sign) are transformed together
in one batched call, so a batch costs at most 2 x len(OPS) calls per round, not one per
image.

The op set is torchvision's (TF's minus invert, cutout and solarize-add, plus identity);
magnitudes follow torchvision's ranges at M = 10, which fix TF's known quirks (TF's
enhancers only brighten, its posterize keeps 0 bits and its solarize does nothing at the
weakest setting): rotate 30 deg, shear 0.3, translate 45% of the side, enhance factor 1 +-
0.9, posterize down to 4 bits, solarize threshold 255 -> 0. Geometric ops fill with grey
(128), as TF does.
"""
from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as F

FILL = 128.0
OPS = ("identity", "auto_contrast", "equalize", "rotate", "posterize", "solarize", "color", "contrast",
       "brightness", "sharpness", "shear_x", "shear_y", "translate_x", "translate_y")
SIGNED = frozenset({"rotate", "color", "contrast", "brightness", "sharpness", "shear_x", "shear_y",
                    "translate_x", "translate_y"})


def apply_op(x: torch.Tensor, op: str, magnitude: float, sign: float) -> torch.Tensor:
    """One operation on a uint8 N x C x H x W batch; `magnitude` on TF's 0-10 scale."""
    f = magnitude / 10
    fill = [FILL] * x.shape[1]
    if op == "identity":
        return x
    if op == "auto_contrast":
        return F.autocontrast(x)
    if op == "equalize":
        return F.equalize(x)
    if op == "rotate":
        return F.rotate(x, sign * 30 * f, fill=fill)
    if op == "posterize":
        return F.posterize(x, max(1, min(8, round(8 - 4 * f))))
    if op == "solarize":
        return F.solarize(x, max(0.0, min(255.0, 255 * (1 - f))))
    if op in ("color", "contrast", "brightness", "sharpness"):
        factor = max(0.0, 1 + sign * 0.9 * f)
        adjust = {"color": F.adjust_saturation, "contrast": F.adjust_contrast,
                  "brightness": F.adjust_brightness, "sharpness": F.adjust_sharpness}[op]
        return adjust(x, factor)
    if op in ("shear_x", "shear_y"):
        degrees = math.degrees(math.atan(sign * 0.3 * f))
        shear = [degrees, 0.0] if op == "shear_x" else [0.0, degrees]
        return F.affine(x, angle=0.0, translate=[0.0, 0.0], scale=1.0, shear=shear, fill=fill)
    if op in ("translate_x", "translate_y"):
        pixels = sign * 0.45 * f * x.shape[-1]
        shift = [pixels, 0.0] if op == "translate_x" else [0.0, pixels]
        return F.affine(x, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0], fill=fill)
    raise ValueError(f"unknown RandAugment op {op!r}")


def rand_augment(x: torch.Tensor, ops: int, magnitude: float, generator: torch.Generator) -> torch.Tensor:
    """`ops` random operations per image of a uint8 batch (a new tensor; `x` is not changed)."""
    b = x.shape[0]
    for _ in range(ops):
        choice = torch.randint(0, len(OPS), (b,), generator=generator)
        negative = torch.rand(b, generator=generator) < 0.5
        out = x.clone()
        for code in choice.unique().tolist():
            op = OPS[code]
            for neg in ((False, True) if op in SIGNED else (None,)):
                mask = choice == code if neg is None else (choice == code) & (negative == neg)
                idx = mask.nonzero().squeeze(1).to(x.device)
                if len(idx):
                    out[idx] = apply_op(x[idx], op, magnitude, -1.0 if neg else 1.0)
        x = out
    return x
