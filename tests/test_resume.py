"""A sweep killed with SIGKILL at random moments, again and again, then let finish: exactly
one FINISHED run per point, none lost or duplicated, and every point's metrics equal those
of an uninterrupted sweep (deterministic mode)."""
from __future__ import annotations

import pytest

import os
import random
import signal
import subprocess
import sys
import time

from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, point_runs, run_cli

SWEEP = ["--multirun", "--config-dir", "sweeps", "--config-name", "smoke", "model.width=0.25,0.5",
         "model.depth=14", "data.resolution=12,16", "recipe.epochs=3", "data.synthetic_images=2000",
         "recipe=resnet_rs", "trainer.deterministic=true", "trainer.latency_repeats=2", "trainer.progress=false",
         "sweep=kill"]
KILLS = 5
COMPARED = ("top1", "top5", "minival/top1", "minival/top1_no_ema")


def _runs(home):
    return point_runs(home, "kill")


def _kill_at_random(home, rng) -> None:
    """Start the sweep; once this process has written a checkpoint (so the kill lands inside
    a point, not in start-up), SIGKILL it a random 0-3 s later."""
    env = dict(os.environ, STUDY_HOME=str(home), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "study.run", *SWEEP], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    started, deadline = time.time(), time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and \
            not any(p.stat().st_mtime > started for p in home.glob("checkpoints/*/*.pt")):
        time.sleep(0.1)
    time.sleep(rng.uniform(0, 3))
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path):
    reference = run_cli(*SWEEP, home=tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = {r.data.tags["point_key"]: r.data.metrics for r in _runs(tmp_path / "reference")}
    assert len(expected) == 4

    home, rng = tmp_path / "killed", random.Random(7)
    for _ in range(KILLS):
        _kill_at_random(home, rng)
    final = run_cli(*SWEEP, home=home)
    assert final.returncode == 0, final.stderr[-3000:]

    runs = _runs(home)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert sorted(r.data.tags["point_key"] for r in finished) == sorted(expected)  # one each, none lost
    assert len(runs) == 4, "a killed attempt continues in its run; it never leaves a second one"
    client = MlflowClient(tracking_uri=f"sqlite:///{home}/mlflow.db")
    for run in finished:
        for key in COMPARED:
            assert run.data.metrics[key] == expected[run.data.tags["point_key"]][key], key
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
        assert steps == list(range(1, int(run.data.params["recipe.epochs"]) + 1)), "each epoch logged once"
    resumed = sum(int(r.data.tags.get("resumed", "0")) for r in runs)
    restarted = sum(int(r.data.tags.get("restarted", "0")) for r in runs)
    assert resumed >= 1, "at least one kill should land inside a point and be resumed"
    assert not list((home / "checkpoints").glob("*/*.pt"))  # finished points clean up
    print(f"points 4, kills {KILLS}, resumed from a checkpoint {resumed}, restarted before one {restarted}, "
          f"runs {len(runs)}, FINISHED {len(finished)}")


def test_sigterm_leaves_the_run_killed_with_the_reason_and_a_rerun_resumes_it(tmp_path):
    """scancel, a preemption or `kill` sends SIGTERM: the point's run is recorded KILLED with why,
    its checkpoint stays, the process ends by SIGTERM, and the rerun continues the same run."""
    point = ["data=synthetic", "data.synthetic_images=2000", "model.width=0.25", "model.depth=14", "data.resolution=12",
             "recipe=resnet_rs", "recipe.epochs=8", "trainer.latency_repeats=2", "trainer.progress=false", "sweep=term"]
    env = dict(os.environ, STUDY_HOME=str(tmp_path), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "study.run", *point], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not list(tmp_path.glob("checkpoints/*/*.pt")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == -signal.SIGTERM
    (run,) = point_runs(tmp_path, "term")
    assert run.info.status == "KILLED" and "SIGTERM" in run.data.tags["status_reason"]
    assert list(tmp_path.glob("checkpoints/*/*.pt")), "the checkpoint is kept for the rerun"
    result = run_cli(*point, home=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming run {run.info.run_id[:8]}" in result.stdout
    (again,) = point_runs(tmp_path, "term")
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
