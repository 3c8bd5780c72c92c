"""One point on several processes (trainer.processes=N, DistributedDataParallel over gloo on
CPUs): the same global batch reaches one process's accuracy within seed noise, only rank 0
records, and a killed process fails the point cleanly, its rerun resuming the same run."""
from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, point_runs, run_cli

POINT = ["data=synthetic", "data.synthetic_images=1000", "data.resolution=12", "model.depth=14", "model.width=0.25",
         "recipe.batch_size=64", "trainer.latency_repeats=2", "trainer.progress=false"]


@pytest.mark.slow
def test_two_processes_reach_the_accuracy_of_one_at_the_same_global_batch(tmp_path):
    for processes in (1, 2):
        result = run_cli(*POINT, "recipe.epochs=3", "seeds=3", f"trainer.processes={processes}",
                         f"sweep=p{processes}", home=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = point_runs(tmp_path, "p1"), point_runs(tmp_path, "p2")
    assert len(one) == len(two) == 3 and all(r.info.status == "FINISHED" for r in one + two)
    assert {r.data.tags["processes"] for r in two} == {"2"} and {r.data.tags["processes"] for r in one} == {"1"}
    # on CPUs batch norm runs over each process's share (no SyncBatchNorm there): another recipe, keyed
    assert {r.data.params["trainer.sync_batchnorm"] for r in two} == {"false"}
    assert one[0].data.tags["point_key"] != two[0].data.tags["point_key"]
    a, b = [r.data.metrics["top1"] for r in one], [r.data.metrics["top1"] for r in two]
    noise = (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5
    assert abs(statistics.mean(a) - statistics.mean(b)) <= 3 * noise + 0.01, (a, b)


def _workers(pid: int) -> list[int]:
    """The training processes the point's job started (torch's elastic launcher spawns them)."""
    kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    cmdlines = {int(k): open(f"/proc/{k}/cmdline").read() for k in kids if os.path.exists(f"/proc/{k}")}
    return [k for k, c in cmdlines.items() if "spawn_main" in c and "resource_tracker" not in c]


@pytest.mark.slow
def test_a_killed_process_fails_the_point_cleanly_and_the_rerun_resumes(tmp_path):
    point = [*POINT, "data.synthetic_images=2000", "recipe.epochs=12", "trainer.processes=2", "sweep=kill1"]
    env = dict(os.environ, STUDY_HOME=str(tmp_path), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "study.run", *point], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not list(tmp_path.glob("checkpoints/*/*.pt")):
        time.sleep(0.2)
    (lease,) = tmp_path.glob("checkpoints/*/*.lock")
    rank0 = int(lease.read_text().split(" pid ")[1].split()[0])  # rank 0 holds the point's lease
    workers = _workers(proc.pid)
    assert rank0 in workers and len(workers) == 2, workers
    os.kill(next(w for w in workers if w != rank0), signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)  # no hung process: the launcher stops the other rank
    assert not _workers(proc.pid) and not os.path.exists(f"/proc/{rank0}/status")
    assert "process 1 ended by signal SIGKILL" in out, out[-3000:]
    (run,) = point_runs(tmp_path, "kill1")
    assert run.info.status == "KILLED", run.data.tags.get("status_reason")
    assert "another of the point's 2 processes ended" in run.data.tags["status_reason"]
    result = run_cli(*point, home=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming run {run.info.run_id[:8]}" in result.stdout
    (again,) = point_runs(tmp_path, "kill1")
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"


@pytest.mark.slow
def test_torchrun_trains_the_point_as_the_processes_its_job_starts(tmp_path):
    point = [*POINT, "recipe.epochs=2", "trainer.deterministic=true", "trainer.threads=1", "trainer.processes=2"]
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--nproc-per-node", "2", "-m", "study.run"]
    env = dict(os.environ, STUDY_HOME=str(tmp_path))
    wrong = subprocess.run([*torchrun, *point, "trainer.processes=4", "sweep=wrong"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert wrong.returncode != 0 and "trainer.processes=4: this job is one of 2 processes" in wrong.stderr
    ran = subprocess.run([*torchrun, *point, "sweep=torchrun"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert run_cli(*point, "sweep=spawned", home=tmp_path).returncode == 0
    (a,), (b,) = point_runs(tmp_path, "torchrun"), point_runs(tmp_path, "spawned")
    assert a.data.tags["processes"] == b.data.tags["processes"] == "2"
    assert {k: a.data.metrics[k] for k in ("top1", "minival/top1")} == {k: b.data.metrics[k] for k in ("top1", "minival/top1")}
