"""Scale-out through existing engines: the SLURM launcher config composes with the settings
a lab needs, and a sweep runs through submitit's local executor (the same code path as SLURM,
without a cluster)."""
from __future__ import annotations

import re
import socket

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


HOST = socket.gethostname().split(".")[0]
SQLITE, LOOPBACK, SERVER = "sqlite:////tmp/x/mlflow.db", "http://127.0.0.1:5001", "http://head.lab:5001"
PIN = "+hydra.launcher.additional_parameters.nodelist="


@pytest.mark.parametrize("uri, overrides, refused", [
    (SQLITE, [], "tracking=server"),
    (SQLITE, [f"{PIN}node1"], None),                     # every task on one node
    (SQLITE, [f"{PIN}'node[1-2]'"], "tracking=server"),  # several nodes
    (SERVER, [], None),
    (LOOPBACK, [], "STUDY_SERVER=http://HOST:5001"),      # each node's own loopback
    (LOOPBACK, [f"{PIN}node1"], "STUDY_SERVER=http://HOST:5001"),
    (LOOPBACK, [f"{PIN}{HOST}"], None),                  # every task on this machine
])
def test_a_slurm_sweep_needs_a_store_every_node_shares_and_reaches(uri, overrides, refused):
    from study.settings.config import ConfigError
    from study.sweep.cluster import check_store_for_launcher
    from study.sweep.compose import compose_sweep

    launcher = compose_sweep("smoke", ["hydra/launcher=slurm", *overrides]).hydra.launcher
    if refused:
        with pytest.raises(ConfigError, match=re.escape(refused)):
            check_store_for_launcher(uri, launcher)
    else:
        check_store_for_launcher(uri, launcher)
    check_store_for_launcher(uri, compose_sweep("smoke", []).hydra.launcher)  # not SLURM: always allowed


def test_the_server_the_jobs_record_into_is_named_by_study_server(monkeypatch):
    from study.sweep.compose import compose_sweep

    monkeypatch.setenv("STUDY_SERVER", SERVER)
    assert compose_sweep("smoke", ["tracking=server"]).tracking.uri == SERVER


def test_a_slurm_sweep_is_measured_alone_on_a_compute_node_not_where_it_was_launched():
    from study.sweep.cluster import measure_elsewhere
    from study.sweep.compose import compose_sweep

    slurm = compose_sweep("smoke", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"]).hydra.launcher
    assert measure_elsewhere(slurm, "paper", SERVER).endswith(
        f"srun --partition=gpu --gpus=1 make measure SWEEP=paper STORE={SERVER}")
    assert measure_elsewhere(compose_sweep("smoke", []).hydra.launcher, "paper", SERVER) is None
