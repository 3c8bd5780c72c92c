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


def _sweep(tmp_path, make_args: list[str], grid: str, extra_env: dict | None = None):
    env = dict(os.environ, STUDY_HOME=str(tmp_path), **(extra_env or {}))
    done = subprocess.run(["make", "sweep", "SWEEP=smoke", *make_args, f"ARGS={grid}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


TINY = ("model.width=0.25 model.depth=14 recipe.epochs=1 recipe.batch_size=32 data.synthetic_images=200 "
        "trainer.latency_repeats=1 trainer.measure_alone=false analysis.auto=false sweep=packed")


@pytest.mark.slow
def test_jobs_auto_packs_small_points_a_core_each_and_packing_never_enters_a_key(tmp_path):
    cores = len(os.sched_getaffinity(0))
    done = _sweep(tmp_path, ["JOBS=auto"], f"{TINY} data.resolution=8,12 seed=0,1")
    jobs = min(cores, 4)
    assert "hydra/launcher=packed" in done.stdout
    assert f"packing: 4 point(s) packed, {jobs} at once, {max(1, cores // jobs)} thread(s) each" in done.stdout
    runs = point_runs(tmp_path, "packed")
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["launcher"] for r in runs} == {"packed"}
    assert {r.data.tags["threads"] for r in runs} == {str(max(1, cores // jobs))}
    again = _sweep(tmp_path, [], f"{TINY} data.resolution=8,12 seed=0,1")  # one at a time: the same points
    assert "4 points: 0 finished, 4 skipped, 0 failed" in again.stdout


@pytest.mark.slow
def test_on_fake_gpus_jobs_hold_distinct_slots_never_overfill_a_gpu_and_alone_points_run_last(tmp_path):
    from study.point.packing import CONTEXT_MB, RESERVE_MB, estimate_peak_mb
    from study.measure.costs import configuration_complexity
    from study.settings.config import ModelConfig

    def need(resolution):  # the plan's figure for a point of this grid (the model's defaults: SE, ResNet-D)
        c = configuration_complexity(ModelConfig(depth=14, width=0.25), resolution)
        return estimate_peak_mb(c["params"], c["activations"], 32, "bf16") + CONTEXT_MB

    # two GPUs of two slots each whose share holds the 8 and 12 px points but not the 32 px one
    free = RESERVE_MB + 2 * (need(12) + need(32)) / 2
    done = _sweep(tmp_path, ["PACK=2"], f"{TINY} trainer.device=cpu data.resolution=8,12,32 seed=0,1",
                  {"STUDY_FAKE_GPUS": f"{free},{free}"})
    assert "packing: 4 point(s) packed, 4 at once over GPU(s) 0,1" in done.stdout
    assert "packing: 2 point(s) alone, 2 at once over GPU(s) 0,1" in done.stdout
    runs = point_runs(tmp_path, "packed")
    assert len(runs) == 6 and {r.info.status for r in runs} == {"FINISHED"}
    packed = [r for r in runs if r.data.params["data.resolution"] != "32"]
    alone = [r for r in runs if r.data.params["data.resolution"] == "32"]

    def overlap(a, b):
        return a.info.start_time < b.info.end_time and b.info.start_time < a.info.end_time

    for group, per_gpu in ((packed, 2), (alone, 1)):
        for r in group:
            at_once = [o for o in group if overlap(r, o)]  # r itself included
            assert len({o.data.tags["slot"] for o in at_once}) == len(at_once)  # distinct slots
            for gpu in ("0", "1"):
                assert sum(o.data.tags["gpu"] == gpu for o in at_once) <= per_gpu
    assert min(r.info.start_time for r in alone) >= max(r.info.end_time for r in packed)
    assert {r.data.tags["gpu"] for r in alone} <= {"0", "1"}
    assert len({r.data.tags["run_key"] for r in runs}) == 6


def test_a_bad_pack_setting_is_refused_before_any_point_trains(tmp_path):
    env = dict(os.environ, STUDY_HOME=str(tmp_path))
    done = subprocess.run(["make", "sweep", "SWEEP=smoke", "PACK=0", f"ARGS={TINY} data.resolution=8"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "hydra.launcher.pack=0 (PACK)" in done.stderr and "whole number of points per GPU" in done.stderr
    assert point_runs(tmp_path, "packed") == []
    small_gpu = dict(env, STUDY_FAKE_GPUS="1500")  # 476 MiB above the reserve: no point fits with a CUDA context
    refused = subprocess.run(["make", "sweep", "SWEEP=smoke", "PACK=auto", f"ARGS={TINY} data.resolution=8"], cwd=ROOT,
                             env=small_gpu, capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and "needs about" in refused.stderr and "more than the largest GPU" in refused.stderr
    assert point_runs(tmp_path, "packed") == []
    bad = subprocess.run(["make", "decide", "JOBS=two", f"ARGS=sweep=packed"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "--jobs='two' (JOBS): allowed are a whole number" in bad.stderr
