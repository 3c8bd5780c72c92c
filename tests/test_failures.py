"""Failure isolation: a point that raises, diverges or runs out of memory is recorded FAILED
with its reason while the others finish; the sweep exits non-zero; rerunning it retries
only what did not finish."""
from __future__ import annotations

import pytest

from tests.conftest import point_runs, run_cli

SWEEP = ["--multirun", "--config-dir", "sweeps", "--config-name", "smoke", "model.width=0.25,0.5",
         "model.depth=14", "data.resolution=12", "recipe.epochs=1,2", "data.synthetic_images=400",
         "trainer.latency_repeats=2", "sweep=faults"]
FAULTS = "exception:w=0.25 d=14 r=12 e=1;nan:w=0.25 d=14 r=12 e=2;oom:w=0.5 d=14 r=12 e=1"


def _point_runs(home):
    return point_runs(home, "faults")


@pytest.mark.slow
def test_injected_faults_fail_their_points_while_the_others_finish(tmp_path):
    first = run_cli(*SWEEP, home=tmp_path, env={"STUDY_INJECT_FAULT": FAULTS})
    assert first.returncode == 1, first.stderr[-3000:]
    assert "4 points: 1 finished, 0 skipped, 3 failed" in first.stdout
    runs = {r.data.tags["mlflow.runName"]: r for r in _point_runs(tmp_path)}
    reasons = {name: r.data.tags.get("status_reason", "") for name, r in runs.items()}
    assert reasons["w=0.25 d=14 r=12 e=1"].startswith("error: RuntimeError: injected fault")
    assert reasons["w=0.25 d=14 r=12 e=2"].startswith("diverged in fp32:")  # the precision it ran in
    assert reasons["w=0.5 d=14 r=12 e=1"].startswith("out of memory:")
    # each failed point's record and line name the command that reruns it another way
    point = 'make point SWEEP=smoke POINT="model.width=0.25 model.depth=14 data.resolution=12 recipe.epochs=2'
    rerun = runs["w=0.25 d=14 r=12 e=2"].data.tags["rerun_command"]
    assert rerun.startswith(f"at half the learning rate (another point): {point}") and "recipe.lr_per_256=" in rerun
    assert f"to rerun it {rerun}" in first.stdout
    assert "recipe.batch_size=" in runs["w=0.5 d=14 r=12 e=1"].data.tags["rerun_command"]
    # the sweep's end groups them by reason and says how to rerun only them
    assert "3 point(s) failed:" in first.stdout
    for group in ("1 error: RuntimeError (e.g. injected fault", "1 diverged in fp32 (e.g. training loss became nan",
                  "1 out of memory (e.g. simulated out of memory"):
        assert group in first.stdout
    assert "rerun only the failed points (finished ones are skipped): make sweep SWEEP=smoke ARGS=" in first.stdout
    assert runs["w=0.5 d=14 r=12 e=2"].info.status == "FINISHED"
    assert sorted(r.info.status for r in runs.values()) == ["FAILED", "FAILED", "FAILED", "FINISHED"]

    again = run_cli(*SWEEP, home=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 points: 3 finished, 1 skipped, 0 failed" in again.stdout
    finished = [r for r in _point_runs(tmp_path) if r.info.status == "FINISHED"]
    assert len(finished) == 4 and len({r.data.tags["point_key"] for r in finished}) == 4


def test_a_twice_diverged_points_rerun_command_changes_its_learning_rate_instead_of_adding_one():
    from dataclasses import replace

    from study.point.lifecycle import another_way
    from study.settings.config import StudyConfig
    from study.train.trainer import DivergedError

    base = StudyConfig()
    cfg = replace(base, recipe=replace(base.recipe, lr_per_256=500.0), trainer=replace(base.trainer, precision="fp32"))
    again = another_way(DivergedError("loss is nan"), cfg,
                        'make point SWEEP=default POINT="model.width=0.5 recipe.lr_per_256=500 model.depth=26"')
    assert again.endswith('POINT="model.width=0.5 recipe.lr_per_256=250 model.depth=26"'), again
    cfg = replace(cfg, recipe=replace(cfg.recipe, lr_per_256=250.0))  # diverged again: 125, said once
    again = another_way(DivergedError("loss is nan"), cfg, again.partition(": ")[2])
    assert again.count("recipe.lr_per_256=") == 1 and "recipe.lr_per_256=125 " in again, again


def test_the_rerun_of_failed_points_keeps_the_sweeps_launcher_and_its_settings():
    """A SLURM sweep's failed points rerun on SLURM, not on the login node."""
    from study.sweep.callback import failed_groups

    results = [{"status": "FAILED", "name": "w=0.25 d=14 r=12 e=1", "reason": "error: RuntimeError: boom"},
               {"status": "FINISHED", "name": "w=0.5 d=14 r=12 e=1"}]
    text = failed_groups(results, "smoke", ["tracking=server", "model.width=0.25,0.5"],
                         ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.sweep.dir=/tmp/x",
                          "+hydra.launcher.additional_parameters.nodelist=node1", "hydra.job.chdir=false"])
    assert text.splitlines()[-1] == (
        'rerun only the failed points (finished ones are skipped): make sweep SWEEP=smoke ARGS="hydra/launcher=slurm '
        'hydra.launcher.partition=gpu +hydra.launcher.additional_parameters.nodelist=node1 tracking=server '
        'model.width=0.25,0.5"')
