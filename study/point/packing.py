"""Packing a sweep's points onto GPUs: how many train at once on each GPU, which points need a GPU
to themselves, and which GPU a job takes (issue 31, the part that runs without a GPU).

    plan("auto", {"w=0.25 d=26 r=16 e=1": 900.0, ...}, visible_gpus())  -> Plan
    with claim_slot(sweep_dir, plan) as gpu:  # in each joblib worker: CUDA_VISIBLE_DEVICES=gpu
        ...

- How many at once (`pack`): a whole number N per GPU, or `auto`: as many as the GPU's free memory
  holds of the largest packed point's peak, each with its own CUDA context (CONTEXT_MB), keeping
  RESERVE_MB free; at most MAX_PER_GPU.
- A point that does not fit beside others (its peak over a slot's share) runs alone, one per GPU,
  after the packed ones, and the plan says so; a point that does not fit on the largest GPU
  even alone is refused before anything trains, naming it and its memory.
- A point's peak is its measured `step_peak_mem_mb` (study.measure.alone records it per architecture)
  where one is recorded, else `estimate_peak_mb`.
- Placement: the slots of all GPUs are numbered GPU by GPU in turn (slot 0 on GPU 0, slot 1 on
  GPU 1, ...), and each job claims the lowest free slot with a lock file, held while it runs;
  so jobs spread over the GPUs and a GPU never holds more jobs than its slots. SLURM jobs get
  their GPUs from the scheduler instead (conf/hydra/launcher/slurm.yaml: gpus_per_task).
Packing never enters a point's key (study.settings.grid): it says where a point runs, not what it trains.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from study.settings.config import ConfigError

CONTEXT_MB = 600.0   # one process's CUDA context with cuDNN/cuBLAS workspaces (to be measured per card)
RESERVE_MB = 1024.0  # kept free on every GPU
MAX_PER_GPU = 16


@dataclass(frozen=True)
class Gpu:
    index: int
    free_mb: float

    @property
    def room_mb(self) -> float:
        return self.free_mb - RESERVE_MB


@dataclass(frozen=True)
class Plan:
    per_gpu: dict[int, int]        # GPU index -> points trained at once there
    packed: tuple[str, ...]        # points trained beside others
    alone: tuple[str, ...]         # points that need a GPU to themselves (trained after, one per GPU)

    @property
    def slots(self) -> list[int]:
        """The GPU of each slot, GPU by GPU in turn."""
        order, left = [], dict(self.per_gpu)
        while any(left.values()):
            for gpu in sorted(left):
                if left[gpu]:
                    order.append(gpu)
                    left[gpu] -= 1
        return order

    def lines(self) -> list[str]:
        shown = ", ".join(f"GPU {g}: {n}" for g, n in sorted(self.per_gpu.items()))
        lines = [f"packing: {len(self.packed)} points, at once per GPU {shown}"]
        if self.alone:
            lines.append(f"packing: {len(self.alone)} point(s) do not fit beside others and run alone, one per "
                         f"GPU, after them: {', '.join(self.alone)}")
        return lines


def visible_gpus() -> list[Gpu]:
    """The GPUs this process sees, with their free memory; none without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [Gpu(i, torch.cuda.mem_get_info(i)[0] / 2**20) for i in range(torch.cuda.device_count())]


def estimate_peak_mb(params: int, activations: int, batch: int, precision: str, data_mb: float = 0.0) -> float:
    """A training step's peak before it is measured: weights, gradients, momentum and EMA in fp32
    (4 x 4 bytes a parameter), the activations kept for the backward pass (conv/linear outputs,
    and about as much again for batch norm and ReLU: 2 x `activations` per image, 2 bytes in bf16,
    4 in fp32), and the data set when it lives on the GPU."""
    act_bytes = 2 if precision == "bf16" else 4
    return (16 * params + 2 * activations * batch * act_bytes) / 2**20 + data_mb


def parse_pack(text: str | int) -> int | None:
    """A whole number of points per GPU (>= 1), or None for auto."""
    if str(text).strip().lower() == "auto":
        return None
    try:
        n = int(str(text))
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"invalid settings:\n  pack={text!r}: allowed are a whole number of points per GPU "
                          "(1 or more) or auto (as many as the GPU's free memory holds)")
    return n


def plan(pack: str | int, peaks: dict[str, float], gpus: list[Gpu]) -> Plan:
    """How the points of `peaks` (name -> peak MiB of one training step) go onto `gpus`."""
    if not gpus:
        raise ConfigError("invalid settings:\n  pack: packing points onto GPUs needs a GPU; none is visible "
                          "(CUDA_VISIBLE_DEVICES, or a machine without one)")
    per = parse_pack(pack)
    largest = max(gpus, key=lambda g: g.room_mb)
    need = {name: peak + CONTEXT_MB for name, peak in peaks.items()}
    too_big = [n for n, mb in need.items() if mb > largest.room_mb]
    if too_big:
        worst = max(too_big, key=need.get)
        raise ConfigError(f"invalid settings:\n  point {worst}: needs about {need[worst]:.0f} MiB on a GPU (its "
                          f"training step's peak and a CUDA context), more than the largest GPU has free "
                          f"({largest.room_mb:.0f} MiB, GPU {largest.index}, {RESERVE_MB:.0f} MiB kept free); "
                          f"{len(too_big)} point(s) do not fit alone: lower recipe.batch_size")
    smallest = min(g.room_mb for g in gpus)
    share = smallest / per if per else smallest / 2  # a slot's memory: auto packs what fits two to a GPU
    packed = tuple(n for n in peaks if need[n] <= share)
    alone = tuple(n for n in peaks if need[n] > share)
    slot_mb = max((need[n] for n in packed), default=0.0)
    per_gpu = {g.index: (per if per else min(MAX_PER_GPU, int(g.room_mb // slot_mb))) if slot_mb else 1 for g in gpus}
    return Plan(per_gpu, packed, alone)


@contextmanager
def claim_slot(folder: Path, slots: list[int]):
    """Hold the lowest free slot of `slots` (the GPU of each) while the block runs, with its GPU
    as the only one this process sees (CUDA_VISIBLE_DEVICES, set before CUDA starts); yields
    the GPU index. Raises RuntimeError when every slot is held (more jobs than slots)."""
    folder.mkdir(parents=True, exist_ok=True)
    for slot, gpu in enumerate(slots):
        handle = open(folder / f"gpu-slot-{slot}.lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        saved = os.environ.get("CUDA_VISIBLE_DEVICES")
        seen = [d for d in (saved or "").split(",") if d.strip()]  # the index is among the GPUs this process sees
        os.environ["CUDA_VISIBLE_DEVICES"] = seen[gpu] if gpu < len(seen) else str(gpu)
        try:
            yield gpu
        finally:
            if saved is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = saved
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
        return
    raise RuntimeError(f"every one of the {len(slots)} GPU slots in {folder} is held: more jobs than slots")
