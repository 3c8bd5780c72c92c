"""`make sweep JOBS=4`: points run in parallel through Hydra's joblib launcher into the
SQLite store, with no lost run and no 'database is locked' failure."""
from __future__ import annotations

import pytest

import os
import subprocess

from tests.conftest import ROOT, point_runs

GRID = ("model.width=0.25 model.depth=14 data.resolution=8,12 seed=0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19 "
        "recipe.epochs=1 recipe.batch_size=32 data.synthetic_images=200 trainer.latency_repeats=1 "
        "trainer.progress=false sweep=parallel")


@pytest.mark.slow
def test_forty_points_in_four_jobs_into_sqlite_lose_nothing(tmp_path):
    env = dict(os.environ, STUDY_HOME=str(tmp_path))
    done = subprocess.run(["make", "sweep", "SWEEP=smoke", "JOBS=4", f"ARGS={GRID}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "hydra/launcher=joblib hydra.launcher.n_jobs=4" in done.stdout  # make passed JOBS on
    assert "40 points: 40 finished, 0 skipped, 0 failed" in done.stdout
    assert "database is locked" not in done.stdout + done.stderr
    runs = point_runs(tmp_path, "parallel")
    assert len(runs) == 40 and {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["run_key"] for r in runs}) == 40 and len({r.data.tags["point_key"] for r in runs}) == 2
    assert {r.data.tags["threads"] for r in runs} == {str(max(1, len(os.sched_getaffinity(0)) // 4))}
    assert {r.data.tags["launcher"] for r in runs} == {"joblib"} and "scheduler" not in runs[0].data.tags
