"""Across processes: two processes on one point (one trains, the other leaves it to it), and a
tracking server that stops in the middle of a point and comes back (the point finishes with
its full record)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study.record.tracking import EPOCH_RETRY_S
from tests.conftest import ROOT, TINY, point_runs, run_cli

pytestmark = pytest.mark.slow

LONG_POINT = [*TINY, "data.synthetic_images=3000", "data.resolution=16", "recipe.epochs=12", "trainer.threads=1"]


def _start(args: list[str], home: Path) -> subprocess.Popen:
    env = dict(os.environ, STUDY_HOME=str(home), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "study.run", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for_checkpoint(home: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not list(home.glob("checkpoints/*/*.pt")):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.1)


def test_a_second_process_on_a_point_in_training_leaves_it_to_its_owner(tmp_path):
    point = [*LONG_POINT, "recipe.epochs=40", "sweep=owned"]  # trains for about a minute
    first = _start(point, tmp_path)
    try:
        _wait_for_checkpoint(tmp_path, first)
        second = run_cli(*point, "force=true", home=tmp_path)  # `make point` during the sweep
        assert first.poll() is None, "the owner must still be training"
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert second.returncode == 0, second.stderr[-3000:]
    assert "skipped: being trained right now by" in second.stdout and f"pid {first.pid}" in second.stdout
    runs = point_runs(tmp_path, "owned")
    assert len(runs) == 1 and runs[0].info.status == "RUNNING", "the second process created or adopted nothing"
    assert "restarted" not in runs[0].data.tags and "resumed" not in runs[0].data.tags


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mlflow_server(home: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", f"sqlite:///{home}/server.db",
                             "--artifacts-destination", str(home / "server-artifacts")],
                            cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read() == b"OK":
                return proc
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("mlflow server did not start within 120 s")


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_a_tracking_server_that_stops_mid_point_and_comes_back_gets_the_full_record(tmp_path):
    port = _free_port()
    server = _mlflow_server(tmp_path, port)
    point = _start([*LONG_POINT, f"tracking.uri=http://127.0.0.1:{port}", "tracking.artifact_root=null",
                    "tracking.retry_s=180", "sweep=outage"], tmp_path)
    try:
        _wait_for_checkpoint(tmp_path, point)  # epoch 1 done and logged
        _stop(server)
        # epochs go on while nobody answers: longer than an epoch's log waits, so logging pauses
        time.sleep(EPOCH_RETRY_S + 4)
        server = _mlflow_server(tmp_path, port)
        out, _ = point.communicate(timeout=400)
        assert point.returncode == 0, out[-3000:]
        assert "logging paused, training goes on" in out and "top1=" in out
        runs = point_runs(tmp_path, "outage", uri=f"http://127.0.0.1:{port}")
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        client = MlflowClient(f"http://127.0.0.1:{port}")
        steps = sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss"))
        assert steps == list(range(1, 13)), "every epoch recorded once"
        assert {"top1", "flops", "latency_ms"} <= runs[0].data.metrics.keys()
        assert {a.path for a in client.list_artifacts(runs[0].info.run_id)} >= {"config.yaml", "record.json"}
        assert not list(tmp_path.glob("checkpoints/*/*.record.json"))
    finally:
        if point.poll() is None:
            os.killpg(point.pid, signal.SIGKILL)
        _stop(server)
