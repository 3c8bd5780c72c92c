"""When `torch.compile` pays: `trainer.compile=auto`.

Compiling costs a fixed time before the first compiled step and then saves a share of every
step. `auto` trains the first epoch eagerly, which measures the point's epoch time on the
machine at hand, then compiles for the rest of the run when the expected saving exceeds the
expected compile time with a margin:

    GAIN[device] * epoch_s * epochs_left  >  MARGIN * (COMPILE_S[device][0] + COMPILE_S[device][1] * modules)

The constants are measured by `make bench ARGS="--only compile"` (small and large points of the
studies, eager against compiled, median of alternated repeats): on a CPU compiled training was
not faster (the convolutions run in oneDNN either way, and the fused elementwise kernels save
less than the graph breaks cost), so `auto` never compiles there; on a GPU it saved 11% of a
bf16 channels_last RS-50 step at 128 px (H200, benchmarks/gpu.py). A resumed run decides again
from its recorded epoch times. In deterministic mode `auto` never compiles: a decision taken
on a timing would make a rerun's numerics depend on how fast the machine was.
"""
from __future__ import annotations

from torch import nn

MARGIN = 1.5
GAIN = {"cpu": 0.0, "cuda": 0.11}                      # share of an eager step saved once compiled
COMPILE_S = {"cpu": (20.0, 0.25), "cuda": (30.0, 0.25)}  # seconds: fixed + per module of the model
MODES = ("auto", "true", "false")


def mode(setting) -> str:
    """trainer.compile as one of MODES (a YAML or CLI true/false arrives as True/False)."""
    return str(setting).lower()


def decide(setting, *, deterministic: bool, device: str, model: nn.Module, epoch_s: float | None,
           epochs_left: int) -> tuple[bool, str]:
    """Whether to compile now, and why, in a line for the run's `compile` tag. `epoch_s` is the
    eager epoch time measured so far (None before the first epoch)."""
    chosen = mode(setting)
    if chosen != "auto":
        return chosen == "true", f"{chosen}: trainer.compile={chosen}"
    if deterministic:
        return False, "off: trainer.deterministic=true (a timing must not choose the numerics)"
    if epoch_s is None or epochs_left <= 0:
        return False, "off: nothing left to train after the first epoch"
    fixed, per_module = COMPILE_S.get(device, COMPILE_S["cuda"])
    cost = fixed + per_module * sum(1 for _ in model.modules())
    saving = GAIN.get(device, 0.0) * epoch_s * epochs_left
    pays = saving > MARGIN * cost
    return pays, (f"{'on' if pays else 'off'}: expected saving {saving:.0f}s over {epochs_left} epoch(s) of "
                  f"{epoch_s:.1f}s ({GAIN.get(device, 0.0):.0%} on {device}) against ~{cost:.0f}s to compile")
