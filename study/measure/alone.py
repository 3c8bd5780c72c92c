"""The measurement phase: latency measured the way the paper means it, with the machine to itself.

A point's in-job figures (`latency_ms`: inference at batch 32 right after training) are taken
while the sweep's other jobs train beside it. Here, when a sweep's last job has ended (the sweep
callback, `trainer.measure_alone`) or on demand (`make measure SWEEP=...`), every finished point's
architecture is measured alone, one at a time, on all cores: one training step (forward,
backward, SGD update) at the largest batch up to 128 that fits, median of repeats with min and
max (study.measure.training_step_latency). It needs the architecture, not the weights: the model is
built anew from the run's params (without dropout or stochastic depth), so a finished sweep can be
measured again on another machine (`make measure SWEEP=... DEVICE=cuda FORCE=1`). Architectures
shared by several points (epoch budgets, seeds) are measured once. Each run gets the metrics
`step_latency_ms`, `step_latency_min_ms`, `step_latency_max_ms`, `step_batch`, `step_img_per_s`,
`step_peak_mem_mb` (the latest measurement) and tags naming its machine (`costs.machine`, an id
such as `cpu-AMD-EPYC-x2` or `cuda-NVIDIA-H100-80GB-HBM3`; `costs.cpu`, `costs.isa`,
`costs.gpu`, `costs.threads`). Every machine's figures are also kept under
`alone/<machine>/<metric>`, so that a sweep measured on several machines keeps them all and
analysis is told which to read (`make analyze ARGS="--measured-on <machine>"`; by default the
machine that measured every run).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from study.measure import costs
from study.settings import hardware
from study.train import models

ARCHITECTURE = ("model.depth", "model.width", "model.se", "model.se_ratio", "model.resnet_d", "data.resolution",
                "data.num_classes", "data.in_chans", "trainer.precision")


def _architecture(run) -> tuple:
    return tuple(run.data.params.get(k, "") for k in ARCHITECTURE)


def _measure(arch: tuple, device: torch.device) -> dict[str, float]:
    depth, width, se, se_ratio, resnet_d, resolution, classes, chans, precision = arch
    torch.manual_seed(0)
    model = models.build_model(int(depth), float(width), num_classes=int(classes), in_chans=int(chans),
                               se=se == "True", se_ratio=float(se_ratio), resnet_d=resnet_d == "True")
    model = model.to(device, memory_format=torch.channels_last)
    return costs.training_step_latency(model, int(resolution), int(chans), int(classes),
                                         memory_format=torch.channels_last,
                                         autocast_dtype=torch.bfloat16 if precision == "bf16" else None)


def measure_sweep(client, experiment_id: str, device: torch.device, *,
                  force: bool = False) -> tuple[int, int, float, dict[str, str]]:
    """Measure the finished point runs of the experiment that lack the measurement (all with
    force); returns (runs, architectures, seconds, the machine's tags)."""
    from mlflow.entities import Metric, RunTag

    runs = [r for r in client.search_runs([experiment_id], "tags.point_key != '' and attributes.status = 'FINISHED'",
                                          max_results=50000)
            if force or "step_latency_ms" not in r.data.metrics]
    groups: dict[tuple, list] = {}
    for run in runs:
        groups.setdefault(_architecture(run), []).append(run)
    start, threads = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(hardware.usable_cores())
    machine = costs.machine(device)
    try:
        tags = [RunTag(k, v) for k, v in machine.items()]
        for arch, members in groups.items():
            now, measured = int(time.time() * 1000), _measure(arch, device)
            metrics = [Metric(name, float(v), now, 0) for k, v in measured.items()
                       for name in (k, f"alone/{machine['measure.machine']}/{k}")]
            for run in members:
                client.log_batch(run.info.run_id, metrics=metrics, tags=tags)
    finally:
        torch.set_num_threads(threads)
    return len(runs), len(groups), time.perf_counter() - start, machine


def after_sweep(tracker, device_name: str) -> str:
    """The sweep callback's line: what was measured alone, or why nothing was."""
    try:
        n, archs, seconds, machine = measure_sweep(tracker.client, tracker.experiment_id, hardware.resolve_device(device_name))
    except Exception as e:  # the points are recorded whatever happens here
        return f"measured alone: failed ({type(e).__name__}: {e}); make measure SWEEP=... tries again"
    if not n:
        return "measured alone: every finished point already was"
    return (f"measured alone: {archs} architecture(s) of {n} point run(s) in {seconds:.0f}s "
            f"(one training step at batch <= {costs.STEP_BATCH_MAX} on {machine['measure.machine']}: "
            "step_latency_ms)")


def main(argv: list[str] | None = None) -> int:
    from mlflow.tracking import MlflowClient

    from study.record.contract import find_experiment
    from study.settings.config import ConfigError
    from study.record.access import check_store

    p = argparse.ArgumentParser(prog="python -m study.measure.alone", description=__doc__.splitlines()[0])
    p.add_argument("--sweep", required=True)
    p.add_argument("--store", required=True, help="tracking URI")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--force", action="store_true", help="measure every run again, on this machine")
    a = p.parse_args(argv)
    try:
        check_store(a.store, a.sweep)  # it tags the sweep's runs
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    client = MlflowClient(a.store)
    experiment = find_experiment(client, a.sweep)
    if experiment is None:
        print(f"error: no sweep named {a.sweep!r} in {a.store}", file=sys.stderr)
        return 2
    try:
        device = hardware.resolve_device(a.device)
    except Exception as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n, archs, seconds, machine = measure_sweep(client, experiment.experiment_id, device, force=a.force)
    print(f"measured {archs} architecture(s) of {n} point run(s) of {a.sweep} alone in {seconds:.0f}s on "
          f"{machine['measure.machine']} ({machine}); analysis reads it with --measured-on {machine['measure.machine']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
