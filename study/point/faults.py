"""Fault injection for failure-isolation tests and drills: STUDY_INJECT_FAULT="KIND:TEXT"
makes every point whose name contains TEXT fail in its first forward pass, the way a real
fault would: `exception` raises a RuntimeError, `nan` turns the model's output into NaN
(the trainer's guard then finds a non-finite loss), `oom` raises torch.OutOfMemoryError.
Several faults are separated by ';'. Unset, nothing is hooked.
"""
from __future__ import annotations

import os

import torch
from torch import nn

ENV = "STUDY_INJECT_FAULT"
KINDS = ("exception", "nan", "oom")


def planned(point_name: str) -> str | None:
    """The fault kind planned for this point, if any."""
    for item in filter(None, os.environ.get(ENV, "").split(";")):
        kind, _, text = item.partition(":")
        if kind not in KINDS:
            raise ValueError(f"{ENV}={item!r}: the kind must be one of {', '.join(KINDS)}")
        if text in point_name:
            return kind
    return None


def inject(model: nn.Module, kind: str) -> None:
    def hook(_module, _inputs, output):
        if not _module.training:
            return output
        if kind == "nan":
            return output * float("nan")
        if kind == "oom":
            raise torch.OutOfMemoryError("simulated out of memory (STUDY_INJECT_FAULT)")
        raise RuntimeError("injected fault (STUDY_INJECT_FAULT)")

    model.register_forward_hook(hook)
