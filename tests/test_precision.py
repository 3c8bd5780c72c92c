"""trainer.precision=auto: bf16 where the hardware runs it natively, fp32 elsewhere, keyed as resolved."""
from __future__ import annotations

import statistics

import pytest
import torch

from study import device as devices
from tests.conftest import TINY, point_runs, run_cli

CPU = torch.device("cpu")


@pytest.mark.parametrize("flags, expected", [
    ({"avx2", "avx512f", "avx512_bf16"}, "bf16"),   # AVX-512 BF16 (Cooper Lake, Zen 4 and newer)
    ({"avx2", "amx_tile", "amx_bf16"}, "bf16"),     # AMX (Sapphire Rapids and newer)
    ({"avx2", "avx512f"}, "fp32"),                  # AVX-512 without BF16: emulated, slower
    ({"avx2", "fma"}, "fp32"),                      # AVX2 only
    (set(), "fp32"),                                # flags unknown (no /proc/cpuinfo)
])
def test_auto_is_bf16_only_on_a_cpu_with_native_bf16(flags, expected):
    assert devices.resolve_precision("auto", CPU, frozenset(flags)) == expected
    for explicit in ("fp32", "bf16"):  # an explicit choice is never overridden
        assert devices.resolve_precision(explicit, CPU, frozenset(flags)) == explicit


def test_the_resolved_precision_is_recorded_and_keyed(study_home):
    out = run_cli(*TINY, "sweep=prec", home=study_home)
    assert out.returncode == 0, out.stderr
    (run,) = point_runs(study_home, "prec")
    resolved = devices.resolve_precision("auto", CPU)
    assert f"precision: auto is {resolved} on this CPU" in out.stdout  # said before training
    assert run.data.params["trainer.precision"] == resolved
    other = "fp32" if resolved == "bf16" else "bf16"
    again = run_cli(*TINY, "sweep=prec", f"trainer.precision={resolved}", home=study_home)
    assert "skipped" in again.stdout  # auto and its resolved value are the same point
    other_run = run_cli(*TINY, "sweep=prec", f"trainer.precision={other}", home=study_home)
    assert other_run.returncode == 0 and "skipped" not in other_run.stdout  # another precision is another point
    keys = {r.data.tags["point_key"] for r in point_runs(study_home, "prec")}
    assert len(keys) == 2


@pytest.mark.slow
def test_bf16_reaches_fp32_top1_within_seed_noise_on_a_default_point(study_home):
    """A point of the default study (MNIST, w=0.25 d=26 at 20 px, 4 epochs), 3 seeds in each precision.
    bf16 autocast computes the same way whether the CPU runs it natively or emulates it, so this holds
    on any CPU; native bf16 only makes it faster."""
    out = run_cli("--multirun", "--config-dir", "sweeps", "--config-name", "default", "model.width=0.25",
                  "model.depth=26", "data.resolution=20", "recipe.epochs=4", "seed=0,1,2", "trainer.precision=fp32,bf16",
                  "trainer.measure_alone=false", "analysis.auto=false", "trainer.progress=false", "sweep=prec",
                  home=study_home, timeout=900)
    assert out.returncode == 0, out.stderr
    top1 = {"fp32": [], "bf16": []}
    for run in point_runs(study_home, "prec"):
        top1[run.data.params["trainer.precision"]].append(run.data.metrics["top1"])
    assert len(top1["fp32"]) == len(top1["bf16"]) == 3
    gap = statistics.mean(top1["bf16"]) - statistics.mean(top1["fp32"])
    noise = statistics.pstdev(top1["fp32"] + top1["bf16"]) * (2 / 3) ** 0.5  # std error of the gap
    print(f"top-1 fp32 {top1['fp32']} bf16 {top1['bf16']}: gap {gap:+.4f}, seed noise of the gap {noise:.4f}")
    assert abs(gap) <= max(3 * noise, 0.01)
