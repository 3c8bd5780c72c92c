"""Across processes: two processes on one point (one trains, the other leaves it to it). A
tracking server that stops in the middle of a sweep and comes back is tests/test_server.py's
(MLflow and PostgreSQL restarted: every point finishes with its full record)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY, point_runs, run_cli, wait_for_checkpoint

pytestmark = pytest.mark.slow

LONG_POINT = [*TINY, "data.synthetic_images=3000", "data.resolution=16", "recipe.epochs=12", "trainer.threads=1"]


def _start(args: list[str], home: Path) -> subprocess.Popen:
    env = dict(os.environ, STUDY_HOME=str(home), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "study.run", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def test_a_second_process_on_a_point_in_training_leaves_it_to_its_owner(tmp_path):
    point = [*LONG_POINT, "recipe.epochs=40", "sweep=owned"]  # trains for about a minute
    first = _start(point, tmp_path)
    try:
        wait_for_checkpoint(tmp_path, first, timeout=120)
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
