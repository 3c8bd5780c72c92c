"""Scale-out through existing engines: the SLURM launcher config composes with the settings
a lab needs, and a sweep runs through submitit's local executor (the same code path as SLURM,
without a cluster)."""
from __future__ import annotations

import pytest

from tests.conftest import TINY, point_runs, run_cli


@pytest.mark.slow
def test_a_sweep_runs_through_submitit(tmp_path):
    result = run_cli("--multirun", "--config-dir", "sweeps", "--config-name", "smoke", "hydra/launcher=submitit_local",
                     "hydra.launcher.timeout_min=10", "model.width=0.25", "model.depth=14", "data.resolution=12",
                     "recipe.epochs=1,2", "data.synthetic_images=400", "trainer.latency_repeats=2",
                     "trainer.progress=false", "sweep=submitit", home=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 points: 2 finished, 0 skipped, 0 failed" in result.stdout
    runs = point_runs(tmp_path, "submitit")
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    for run in runs:  # the run record says how the point ran
        tags = run.data.tags
        assert tags["launcher"] == "submitit_local" and tags["scheduler"] == "local" and tags["job_id"]
        assert tags["processes"] == "1" and tags["nodes"] == "1"


def test_a_point_run_inside_a_slurm_allocation_records_its_job_and_array_ids(tmp_path):
    env = {"SLURM_JOB_ID": "4242", "SLURM_ARRAY_JOB_ID": "4240", "SLURM_ARRAY_TASK_ID": "2"}
    result = run_cli(*TINY, "recipe.epochs=1", "sweep=alloc", home=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = point_runs(tmp_path, "alloc")
    tags = run.data.tags
    assert tags["launcher"] == "basic" and tags["scheduler"] == "slurm" and tags["host"]
    assert (tags["job_id"], tags["array_job_id"], tags["array_task_id"]) == ("4242", "4240", "2")


def test_a_slurm_sweep_into_the_local_sqlite_store_is_refused_before_submission(tmp_path):
    result = run_cli("--multirun", *TINY, "recipe.epochs=1,2", "sweep=cluster", "hydra/launcher=slurm",
                     home=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "hydra/launcher=slurm" in result.stderr and "use tracking=server" in result.stderr.lower()
    assert "+hydra.launcher.additional_parameters.nodelist=HOST" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()  # nothing opened, nothing submitted
    assert not list(tmp_path.rglob(".submitit"))


@pytest.mark.parametrize("overrides, refused", [
    ([], True),
    (["+hydra.launcher.additional_parameters.nodelist=node1"], False),     # every task on one node
    (["+hydra.launcher.additional_parameters.nodelist='node[1-2]'"], True),  # several nodes
    (["tracking=server"], False),
])
def test_only_a_slurm_sweep_pinned_to_one_node_may_share_a_sqlite_store(overrides, refused):
    from study.settings.config import ConfigError
    from study.sweep.cluster import check_store_for_launcher
    from study.sweep.compose import compose_sweep

    cfg = compose_sweep("smoke", ["hydra/launcher=slurm", *overrides])
    uri = "http://127.0.0.1:5001" if "tracking=server" in overrides else "sqlite:////tmp/x/mlflow.db"
    if refused:
        with pytest.raises(ConfigError, match="tracking=server"):
            check_store_for_launcher(uri, cfg.hydra.launcher)
    else:
        check_store_for_launcher(uri, cfg.hydra.launcher)
    check_store_for_launcher(uri, compose_sweep("smoke", []).hydra.launcher)  # not SLURM: always allowed
