"""trainer.compile=auto: compile only where the expected saving over the run exceeds the compile time."""
from __future__ import annotations

import math

import pytest
from torch import nn

from study.train import compiling
from tests.test_trainer import _fit

MODEL = nn.Sequential(*[nn.Linear(4, 4) for _ in range(9)])  # 10 modules


def _decide(setting="auto", device="cuda", epoch_s=100.0, epochs_left=349, deterministic=False):
    return compiling.decide(setting, deterministic=deterministic, device=device, model=MODEL, epoch_s=epoch_s,
                            epochs_left=epochs_left)


def test_auto_compiles_a_long_gpu_run_and_not_a_short_one_or_a_cpu_run():
    on, why = _decide()
    assert on and why.startswith("on: expected saving") and "against ~" in why
    fixed, per_module = compiling.COMPILE_S["cuda"]
    cost = fixed + per_module * 10
    breakeven = compiling.MARGIN * cost / (compiling.GAIN["cuda"] * 100.0)  # epochs left where it starts to pay
    assert not _decide(epochs_left=math.floor(breakeven))[0] and _decide(epochs_left=math.ceil(breakeven) + 1)[0]
    assert not _decide(epoch_s=0.5)[0]
    # a CPU: never for the default study's points (epochs of 0.5-6 s, 3 left after the first) ...
    assert not _decide(device="cpu", epoch_s=6.0, epochs_left=3)[0]
    # ... and for a long CIFAR-sized run only where inductor finds its C++ compiler
    on, why = _decide(device="cpu", epoch_s=57.0, epochs_left=99)
    assert on == compiling.has_cxx() and (on or "C++ compiler" in why)
    assert _decide(epoch_s=None)[1].startswith("off")


def test_an_explicit_setting_wins_and_deterministic_mode_never_compiles_by_itself():
    assert _decide("true", device="cpu", epoch_s=None)[0]
    assert not _decide("false")[0] and _decide("False")[1] == "false: trainer.compile=false"
    assert _decide(True, device="cpu")[0]  # a YAML true arrives as a bool
    on, why = _decide(deterministic=True)
    assert not on and "deterministic" in why
    assert _decide("true", deterministic=True)[0]


@pytest.mark.slow
def test_auto_switches_to_compiled_steps_after_the_first_epoch_when_it_pays(monkeypatch):
    """The decision is taken on the first epoch's time; the compiled steps train the same model
    (evaluation, EMA and checkpoints use the eager one), and the run records what compiling cost."""
    monkeypatch.setitem(compiling.GAIN, "cpu", 1e6)  # as if a compiled step were far cheaper here
    result, _ = _fit(epochs=3)
    assert result.compile.startswith("on:")
    assert result.metrics["top1"] > 0.3 and result.metrics["compile_s"] >= 0
    assert math.isfinite(result.metrics["compile_gain"])
    monkeypatch.setitem(compiling.GAIN, "cpu", 0.0)
    eager, _ = _fit(epochs=3)
    assert eager.compile.startswith("off:") and "compile_s" not in eager.metrics
