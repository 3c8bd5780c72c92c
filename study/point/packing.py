"""Packing a sweep's points: on GPUs, how many train at once on each GPU, which points need a
GPU to themselves and which GPU a job takes; on CPU cores, which points train side by side with a
core each and which run alone on all cores. The launcher hydra/launcher=packed
(study.sweep.packed; make sweep JOBS=auto or PACK=N) runs the plan as phases.

    plan("auto", {"w=0.25 d=26 r=16 e=1": 900.0, ...}, visible_gpus())  -> Plan
    gpu_phases(plan, names, weights, gpus) / cpu_phases(pack, steps, weights, cores) -> [Phase]
    hold_slot(folder, slots)   # in each job's process: CUDA_VISIBLE_DEVICES = its slot's GPU

- How many at once (`pack`): a whole number N per GPU, or `auto`: as many as the GPU's free memory
  holds of the largest packed point's peak, each with its own CUDA context (CONTEXT_MB), keeping
  RESERVE_MB free; at most MAX_PER_GPU. On CPU cores: N jobs at once (cores // N threads each), or
  `auto`: one job per core, one thread each.
- A point that does not fit beside others (its peak over a slot's share) runs alone, one per GPU,
  after the packed ones, and the plan says so; a point that does not fit on the largest GPU
  even alone is refused before anything trains, naming it and its memory. On CPU cores a point
  whose training step is estimated above ALONE_STEP_GFLOP runs alone on all cores, after.
- A point's peak is `estimate_peak_mb` of its model's parameters and activations (counted on the
  meta device); the measured `step_peak_mem_mb` of study.measure.alone is not read yet.
- Placement: the slots of all GPUs are numbered GPU by GPU in turn (slot 0 on GPU 0, slot 1 on
  GPU 1, ...), and each job's process claims the lowest free slot with a lock file, held while
  the process lives (a worker keeps its GPU for every point it trains: CUDA_VISIBLE_DEVICES
  counts only before CUDA starts); so jobs spread over the GPUs and a GPU never holds more jobs
  than its slots. SLURM jobs get their GPUs from the scheduler instead
  (conf/hydra/launcher/slurm.yaml: gpus_per_task).
- Test hook: STUDY_FAKE_GPUS="24000,24000" (free MiB of each) makes `visible_gpus` report those
  GPUs, so plans and slots can be tested on a machine without one (the points train on the CPU).
Packing never enters a point's key (study.settings.grid): it says where a point runs, not what it trains.
"""
from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from study.settings.config import ConfigError

CONTEXT_MB = 600.0   # one process's CUDA context with cuDNN/cuBLAS workspaces (to be measured per card)
RESERVE_MB = 1024.0  # kept free on every GPU
MAX_PER_GPU = 16
# On CPU cores a training step above this runs alone on all cores. Below it two threads buy less
# than two jobs: on a 2-core AMD EPYC every point of the default study (up to 31 GFLOP a step,
# w=0.5 d=101 at 22 px, batch 128) trained 1.13-1.8x faster per core one thread each, side by side.
ALONE_STEP_GFLOP = 100.0
FAKE_GPUS = "STUDY_FAKE_GPUS"


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


@dataclass(frozen=True)
class Phase:
    """Jobs launched together, after the phase before ends: `points` (indices of the sweep's jobs,
    the most compute first), at most `jobs` at once; on GPUs the GPU of each slot."""
    points: tuple[int, ...]
    jobs: int
    slots: tuple[int, ...] = ()
    alone: bool = False


def visible_gpus() -> list[Gpu]:
    """The GPUs this process sees, with their free memory; none without CUDA. STUDY_FAKE_GPUS
    (free MiB of each, comma-separated) stands for them in tests."""
    if fake := os.environ.get(FAKE_GPUS):
        return [Gpu(i, float(mb)) for i, mb in enumerate(fake.split(","))]
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
    """A whole number of points per GPU (or at once on CPU cores, >= 1), or None for auto."""
    if str(text).strip().lower() == "auto":
        return None
    try:
        n = int(str(text))
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"invalid settings:\n  hydra.launcher.pack={text} (PACK): allowed are a whole number of "
                          "points per GPU (1 or more; on CPU cores, at once) or auto (as many as the GPU's free "
                          "memory holds; on CPU cores, one per core)")
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


_held: dict[str, tuple[int, int]] = {}  # folder -> (slot, GPU) this process holds
_handles: list = []                     # their lock files, open while the process lives


def hold_slot(folder: Path, slots: list[int] | tuple[int, ...]) -> tuple[int, int]:
    """This process's slot of `slots` (the GPU of each) in `folder`: the lowest free one, claimed
    with a lock file held until the process ends, and its GPU made the only one the process sees
    (CUDA_VISIBLE_DEVICES, an index among the GPUs it saw before); the same (slot, GPU) for every
    later job of the process. RuntimeError when every slot is held (more jobs than slots)."""
    if str(folder) in _held:
        return _held[str(folder)]
    folder.mkdir(parents=True, exist_ok=True)
    for slot, gpu in enumerate(slots):
        handle = open(folder / f"gpu-slot-{slot}.lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        seen = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        os.environ["CUDA_VISIBLE_DEVICES"] = seen[gpu] if gpu < len(seen) else str(gpu)
        _handles.append(handle)
        _held[str(folder)] = (slot, gpu)
        return slot, gpu
    raise RuntimeError(f"every one of the {len(slots)} GPU slots in {folder} is held: more jobs than slots")


def gpu_phases(p: Plan, names: list[str], weights: list[float], gpus: list[Gpu]) -> list[Phase]:
    """The packed points on every slot of `p`, then the points that run alone, one per GPU."""
    index = {n: i for i, n in enumerate(names)}
    packed = _largest_first([index[n] for n in p.packed], weights)
    alone = _largest_first([index[n] for n in p.alone], weights)
    phases = [Phase(packed, len(p.slots), tuple(p.slots))] if packed else []
    return phases + ([Phase(alone, len(gpus), tuple(g.index for g in gpus), alone=True)] if alone else [])


def cpu_phases(pack: str | int, steps: list[float], weights: list[float], cores: int) -> list[Phase]:
    """On CPU cores: points whose training step (FLOPs) is at most ALONE_STEP_GFLOP side by side,
    `pack` at once (auto: one per core), then the larger ones alone on all cores."""
    at_once = min(parse_pack(pack) or cores, max(1, len(steps)))
    small = [i for i, s in enumerate(steps) if s <= ALONE_STEP_GFLOP * 1e9]
    large = [i for i, s in enumerate(steps) if s > ALONE_STEP_GFLOP * 1e9]
    phases = [Phase(_largest_first(small, weights), at_once)] if small else []
    return phases + ([Phase(_largest_first(large, weights), 1, alone=True)] if large else [])


def phase_lines(phases: list[Phase], names: list[str], cores: int) -> list[str]:
    """What the plan does, a line a phase."""
    lines = []
    for ph in phases:
        where = (f"{ph.jobs} at once over GPU(s) {','.join(map(str, sorted(set(ph.slots))))}" if ph.slots
                 else f"{ph.jobs} at once, {max(1, cores // ph.jobs)} thread(s) each")
        what = "alone" if ph.alone else "packed"
        shown = ", ".join(names[i] for i in ph.points) if ph.alone else f"the most compute first"
        lines.append(f"packing: {len(ph.points)} point(s) {what}, {where} ({shown})")
    return lines


def _largest_first(indices: list[int], weights: list[float]) -> tuple[int, ...]:
    return tuple(sorted(indices, key=lambda i: -weights[i]))
