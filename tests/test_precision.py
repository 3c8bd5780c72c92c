"""trainer.precision: auto is bf16 on a CUDA GPU with bf16 and fp32 on every CPU; bf16 on a CPU is
refused before anything runs (torch 2.14.1's oneDNN bf16 kernels are not sound there); the
precision is recorded, keyed as resolved, and said with its reason."""
from __future__ import annotations

import pytest
import torch

from study.settings.config import ConfigError
from tests.conftest import TINY, point_runs, run_cli
from study.settings import hardware

CPU = torch.device("cpu")

# The CPU kinds CI may run on, by the flags study.point.device reads, and what each says of bf16.
KINDS = {
    "AMX (Sapphire Rapids and newer)": ({"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}, "#5717"),
    "AVX-512 BF16 (Cooper Lake, Zen 4)": ({"avx2", "avx512f", "avx512_bf16"}, "convolution backward"),
    "AVX-512 without BF16": ({"avx2", "avx512f"}, "emulated"),
    "AVX2 only": ({"avx2", "fma"}, "emulated"),
    "flags unknown (no /proc/cpuinfo)": (set(), "emulated"),
}


@pytest.mark.parametrize("kind", KINDS)
def test_auto_is_fp32_and_bf16_is_refused_on_every_kind_of_cpu(kind):
    flags, why = frozenset(KINDS[kind][0]), KINDS[kind][1]
    assert hardware.resolve_precision("auto", CPU, flags) == "fp32"
    assert hardware.resolve_precision("fp32", CPU, flags) == "fp32"
    assert why in hardware.precision_why("auto", CPU, flags)
    with pytest.raises(ConfigError, match="trainer.precision=bf16") as refused:
        hardware.resolve_precision("bf16", CPU, flags)
    assert why in str(refused.value) and "trainer.precision=fp32" in str(refused.value)


@pytest.mark.parametrize("supported, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_is_bf16_on_a_cuda_gpu_that_has_it(monkeypatch, supported, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    gpu = torch.device("cuda")
    assert hardware.resolve_precision("auto", gpu) == expected
    assert hardware.resolve_precision("bf16", gpu) == "bf16"  # an explicit choice on a GPU stands


def test_the_resolved_precision_is_recorded_keyed_and_said(study_home):
    out = run_cli(*TINY, "sweep=prec", home=study_home)
    assert out.returncode == 0, out.stderr
    (run,) = point_runs(study_home, "prec")
    assert "precision: fp32 (auto is fp32 on every CPU; here: " in out.stdout  # said before training
    assert run.data.params["trainer.precision"] == "fp32"
    assert run.data.tags["precision_reason"].startswith("auto is fp32 on every CPU")
    again = run_cli(*TINY, "sweep=prec", "trainer.precision=fp32", home=study_home)
    assert "skipped" in again.stdout  # auto and its resolved value are the same point


@pytest.mark.parametrize("multirun", [False, True])
def test_bf16_on_a_cpu_is_refused_before_anything_is_recorded(study_home, multirun):
    run_cli(*TINY, "sweep=prec", home=study_home)
    args = ["--multirun", "seed=0,1"] if multirun else []
    out = run_cli(*args, *TINY, "sweep=prec", "trainer.precision=bf16", home=study_home)
    assert out.returncode == 2
    assert "error: trainer.precision=bf16 on a CPU: refused" in out.stderr and "Traceback" not in out.stderr
    assert len(point_runs(study_home, "prec")) == 1  # the recorded point is untouched, nothing added


def test_fp16_is_refused_naming_the_setting(study_home):
    out = run_cli(*TINY, "trainer.precision=fp16", home=study_home)
    assert out.returncode == 2 and "trainer.precision='fp16': must be one of auto, fp32, bf16" in out.stderr
