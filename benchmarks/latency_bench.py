"""Latency measured alone against latency measured in a parallel sweep.

The same 4 points (w=0.25,0.5 x d=14,26 on MNIST at 28 px, one epoch) are swept twice into
separate stores, with JOBS=1 and with JOBS=2 (two points training at once on this machine). For
each point: the ratio of its recorded latency in the JOBS=2 sweep to the JOBS=1 sweep's, for the
in-job inference latency (`latency_ms`, taken right after training, beside the other job) and for
the measurement phase's training step (`step_latency_ms`, study.measure.alone, taken when the sweep's jobs
have ended). A repeat is one pair of sweeps, its figure the median ratio over the 4 points;
printed: the median of 5 alternated repeats with min-max; the target is |ratio - 1| < 10% for the
measurement phase.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRID = ["model.width=0.25,0.5", "model.depth=14,26", "data.resolution=28", "recipe.epochs=1"]


def _sweep(home: str, jobs: int) -> dict[str, dict[str, float]]:
    from mlflow.tracking import MlflowClient

    from study.record.contract import find_experiment

    launch = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"] if jobs > 1 else []
    cmd = [sys.executable, "-m", "study.run", "--multirun", "--config-dir", "sweeps", "--config-name", "default",
           *GRID, *launch, "sweep=latency_bench", "analysis.auto=false", "trainer.progress=false"]
    subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, STUDY_HOME=home), check=True, capture_output=True)
    client = MlflowClient(f"sqlite:///{home}/mlflow.db")
    experiment = find_experiment(client, "latency_bench")
    runs = client.search_runs([experiment.experiment_id], "tags.point_key != ''")
    return {r.data.tags["mlflow.runName"]: r.data.metrics for r in runs}


REPEATS = 5


def _row(label: str, ratios: list[float], target: str) -> tuple:
    spread = (f"median of {len(ratios)} alternated pairs of sweeps (each the median of 4 points), "
              f"min-max {min(ratios):.3f}-{max(ratios):.3f}")
    return (label, spread, None, None, statistics.median(ratios), target)


def bench_latency(args) -> list[tuple]:
    in_job, step = [], []
    for repeat in range(REPEATS):  # pairs alternate their order, so a drift in the machine's speed cancels
        with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as two:
            if repeat % 2:
                parallel, alone = _sweep(two, 2), _sweep(one, 1)
            else:
                alone, parallel = _sweep(one, 1), _sweep(two, 2)
        names = sorted(alone)
        in_job.append(statistics.median(parallel[n]["latency_ms"] / alone[n]["latency_ms"] for n in names))
        step.append(statistics.median(parallel[n]["step_latency_ms"] / alone[n]["step_latency_ms"] for n in names))
    return [_row("in-job latency, JOBS=2 / JOBS=1", in_job, "(contended)"),
            _row("step latency alone, JOBS=2 / JOBS=1", step, "0.90-1.10")]
