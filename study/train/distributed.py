"""One point on several processes: `trainer.processes=N` trains it with DistributedDataParallel
(gloo on CPUs, nccl on GPUs).

What the recipe means at any N:
- recipe.batch_size is the global batch: each step every process takes its 1/N share of the
  same batch (in memory: the very batch one process would draw, augmentations included; when
  streamed: its share of the same images, each process reading only its own files). DDP
  averages the gradients, so the step, and so the learning rate (recipe.lr_per_256 x global
  batch / 256), are those of one process.
- trainer.sync_batchnorm (default true) computes batch-norm statistics over the global batch,
  as one process does; false normalises over each process's share (and then the point key
  holds the number of processes, since that changes what is trained).
- evaluation is shared out by batches and the counts summed: the same accuracy as one process.
- dropout and stochastic depth draw from a generator per process, reseeded each epoch from
  (seed, epoch, rank) on ranks > 0, so a resumed point draws what an uninterrupted one does.
- rank 0 alone owns the point: it takes the lease, records to MLflow, writes checkpoints and
  measures; it tells the other ranks whether to train and whether to resume (a plan), and they
  load the same checkpoint (a folder every process reaches).

Started three ways: by the point's own job (a sweep or a single point with processes > 1 and
no world around it: N local processes through torch.distributed's elastic launcher, torchrun's
engine); by `torchrun --nproc-per-node N -m study.run ...`; or by the SLURM launcher with
`hydra.launcher.tasks_per_node=N` (submitit's environment gives ranks and the rendezvous).
A process that dies ends the others (the elastic agent, or SLURM for a job step): the point's
run is recorded KILLED with the reason and a rerun resumes from the last checkpoint.
"""
from __future__ import annotations

import datetime
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

TIMEOUT = datetime.timedelta(minutes=10)  # a collective that waits longer fails the point


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    nodes: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.size


ALONE = World()


def current() -> World:
    """The world this process belongs to: torchrun's (or the elastic launcher's) environment,
    else a submitit job's tasks, else one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        size = int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_WORLD_SIZE", size))
        return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", 0)), max(1, size // local))
    try:
        import submitit

        env = submitit.JobEnvironment()  # raises outside a submitit job
        if env.num_tasks > 1:
            return World(env.global_rank, env.num_tasks, env.local_rank, env.num_nodes)
    except Exception:
        pass
    return ALONE


def device_for(device: torch.device, world: World) -> torch.device:
    """Each process of a point on GPUs takes the GPU of its local rank."""
    if device.type == "cuda" and world.size > 1:
        return torch.device("cuda", world.local_rank % torch.cuda.device_count())
    return device


@contextmanager
def joined(world: World, device: torch.device) -> Iterator[None]:
    """The process group of a point's processes, for the duration of the point."""
    if world.size == 1:
        yield
        return
    if "MASTER_ADDR" not in os.environ:  # a submitit job: its tasks meet at the first node
        import submitit.helpers

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT,
                            rank=world.rank, world_size=world.size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def tell(world: World, value: Any = None) -> Any:
    """Rank 0 tells the others what to do (its `value`); every rank returns it."""
    if world.size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class Plan:
    """What rank 0 tells a point's other processes, once: what to train (the study as tuned,
    whether to resume from the checkpoint, the run, the loader's workers), or None."""

    def __init__(self, world: World) -> None:
        self.world, self.told = world, world.size == 1

    def tell(self, plan: dict | None) -> None:
        if self.told:
            return
        self.told = True
        try:
            tell(self.world, plan)
        except Exception:
            if plan is not None:
                raise  # the others are gone before training: the point fails


def total(x: torch.Tensor, world: World) -> torch.Tensor:
    """The sum over the point's processes (in place)."""
    if world.size > 1:
        dist.all_reduce(x)
    return x


def wrap(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """The module the training steps run: DDP over the eager `model` (which evaluation, the EMA
    and checkpoints keep using)."""
    if world.size == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def sync_batchnorm(model: nn.Module, world: World, on: bool) -> nn.Module:
    """The model with batch norm over the global batch (before the optimizer sees it)."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(model) if world.size > 1 and on else model


def reseed(seed: int, epoch: int, world: World) -> None:
    """Ranks > 0 draw dropout and stochastic depth from their own stream, the same in a run
    resumed at this epoch as in an uninterrupted one (rank 0's is in its checkpoint)."""
    if world.size > 1 and world.rank > 0:
        torch.manual_seed(hash((seed, epoch, world.rank)) % 2 ** 62)


def launch(fn: Callable[..., Any], args: tuple, processes: int) -> Any:
    """Run fn(*args) on `processes` local processes through torch.distributed's elastic
    launcher (torchrun's engine); returns rank 0's result. A process that fails ends the
    others; the launcher then raises ChildFailedError."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    port = _free_port()
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id=f"point-{port}",
                          rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{port}", max_restarts=0,
                          monitor_interval=0.5, start_method="spawn")
    return elastic_launch(config, fn)(*args)[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LOST = ("Connection closed by peer", "Connection reset by peer", "NCCL", "gloo")


def peer_lost(e: BaseException, world: World) -> bool:
    """Whether an error in a point's process says another of its processes is gone (a collective
    failed), which interrupts the point rather than failing its training."""
    return world.size > 1 and (isinstance(e, dist.DistError) or any(s in str(e) for s in LOST))


def failure(e: BaseException) -> str:
    """One line on how the point's processes ended (from ChildFailedError)."""
    failures = getattr(e, "failures", None) or {}
    parts = []
    for rank, f in sorted(failures.items()):
        how = f"signal {f.signal_name()}" if f.exitcode < 0 else f"exit code {f.exitcode}"
        parts.append(f"process {rank} ended by {how}")
    return "; ".join(parts) or f"{type(e).__name__}: {e}"

