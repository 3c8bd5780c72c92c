"""When `torch.compile` pays: `trainer.compile=auto`.

Compiling costs a fixed time before the first compiled step and then saves a share of every
step. `auto` trains the first epoch eagerly, which measures the point's epoch time on the
machine at hand, then compiles for the rest of the run when the expected saving exceeds the
expected compile time with a margin:

    GAIN[device] * epoch_s * epochs_left  >  MARGIN * (COMPILE_S[device][0] + COMPILE_S[device][1] * modules)

The constants come from `make bench ARGS="--only compile"` (cold compiles, inductor's caches
off; steady saving as the median of 5 alternated repeats of 10 steps, eager against compiled) on a
2-core AMD EPYC with avx512_bf16, bf16 autocast, torch 2.14: compile 52 s for the default study's
smallest model (111 modules), 70-71 s for its largest and the CIFAR study's largest (255 modules),
so about 38 s + 0.13 s per module; the compiled step saved 18%, 8% and 12% of the eager step.
GAIN takes the smallest of those, so `auto` compiles only where even that pays: on that CPU,
a CIFAR-10 point of 45,000 images an epoch at w=0.5 d=38 (57 s an epoch) with more than 23
epochs left after the first; never in the default study (0.5-6 s epochs, 4 at most). On a GPU
the saving is the 10% measured for a bf16 channels_last RS-50 at 128 px on an H200
(benchmarks/gpu.py: 4,465 -> 4,966 img/s); its compile time was not measured with these
constants (no GPU was lent when they were set), so it is the CPU's, raised to 60 s fixed;
`python -m benchmarks.gpu` prints the compile time it sees. Without a C++ compiler (inductor
builds CPU kernels with g++), `auto` stays eager on a CPU. A resumed run decides again from its
recorded epoch times. In deterministic mode `auto` never compiles: a decision taken on a timing
would make a rerun's numerics depend on how fast the machine was.
"""
from __future__ import annotations

from functools import cache

from torch import nn

from study.settings.config import mode

MARGIN = 1.5
GAIN = {"cpu": 0.08, "cuda": 0.10}                     # share of an eager step saved once compiled
COMPILE_S = {"cpu": (38.0, 0.13), "cuda": (60.0, 0.13)}  # seconds: fixed + per module of the model


def decide(setting, *, deterministic: bool, device: str, model: nn.Module, epoch_s: float | None,
           epochs_left: int) -> tuple[bool, str]:
    """Whether to compile now, and why, in a line for the run's `compile` tag. `epoch_s` is the
    eager epoch time measured so far (None before the first epoch)."""
    chosen = mode(setting)
    if chosen != "auto":
        return chosen == "true", f"{chosen}: trainer.compile={chosen}"
    if deterministic:
        return False, "off: trainer.deterministic=true (a timing must not choose the numerics)"
    if device == "cpu" and not has_cxx():
        return False, "off: no C++ compiler for inductor's CPU code (g++; CXX)"
    if epoch_s is None or epochs_left <= 0:
        return False, "off: nothing left to train after the first epoch"
    fixed, per_module = COMPILE_S.get(device, COMPILE_S["cuda"])
    cost = fixed + per_module * sum(1 for _ in model.modules())
    saving = GAIN.get(device, 0.0) * epoch_s * epochs_left
    pays = saving > MARGIN * cost
    return pays, (f"{'on' if pays else 'off'}: expected saving {saving:.0f}s over {epochs_left} epoch(s) of "
                  f"{epoch_s:.1f}s ({GAIN.get(device, 0.0):.0%} on {device}) against ~{cost:.0f}s to compile")


@cache
def has_cxx() -> bool:
    """Whether inductor finds the C++ compiler it builds CPU kernels with."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return bool(get_cpp_compiler())
    except Exception:  # InvalidCxxCompiler, or an inductor without this function
        return False
