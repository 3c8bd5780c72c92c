"""Drills against a live single-node SLURM cluster (deploy/slurm/cluster.sh: munge, MariaDB +
slurmdbd, slurmctld, slurmd): a sweep submitted as an array through `hydra/launcher=slurm`,
a time limit that requeues a point, a preemption (`scontrol requeue`) and a `scancel`, each
leaving the study whole. Skipped, with the reason, where the cluster cannot be started (not
root, or the Debian packages missing: .ci/run installs them)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, point_runs, run_cli

pytestmark = pytest.mark.slow
SCRIPT = ROOT / "deploy" / "slurm" / "cluster.sh"
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "sbatch")
# one core and 1 GB per point, so two points run at once on a 2-core machine
# the cluster's one node (cluster.sh names it `hostname -s`): the local SQLite store may be shared
SLURM = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_task=0", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=1", f"+hydra.launcher.additional_parameters.nodelist={socket.gethostname().split('.')[0]}"]
# deterministic, one thread: its metrics do not depend on where or in how many attempts it ran
EXACT = ["recipe=resnet_rs", "trainer.deterministic=true", "trainer.threads=1", "trainer.latency_repeats=2",
         "trainer.progress=false"]
POINT = ["data=synthetic", "model.width=0.25", "model.depth=14", "data.resolution=12", *EXACT]
COMPARED = ("top1", "top5", "minival/top1", "minival/top1_no_ema")

def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the test cluster's daemons run as root (sudo deploy/slurm/cluster.sh start)"
    if missing := [d for d in DAEMONS if not shutil.which(d)]:
        return f"{', '.join(missing)} not installed (apt-get install slurm-wlm slurmdbd munge mariadb-server)"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """SLURM_CONF of a cluster started for these tests, stopped after them."""
    if reason := _unavailable():
        pytest.skip(f"no SLURM cluster: {reason}")
    folder = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(["bash", str(SCRIPT), "start", str(folder)], capture_output=True, text=True, timeout=180)
    if started.returncode:
        subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], capture_output=True)
        pytest.fail(f"the SLURM cluster did not start: {started.stderr[-2000:]}")
    yield {"SLURM_CONF": str(folder / "slurm.conf")}
    subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], capture_output=True, timeout=120)


def _slurm(env: dict, *args: str) -> str:
    return subprocess.run(list(args), env=dict(os.environ, **env), capture_output=True, text=True,
                          timeout=60).stdout


def _submit(home: Path, env: dict, *args: str):
    """Start a sweep through the SLURM launcher as a user would; returns the Popen."""
    return subprocess.Popen([sys.executable, "-m", "study.run", "--multirun", *args, *SLURM], cwd=ROOT,
                            env=dict(os.environ, STUDY_HOME=str(home), PYTHONUNBUFFERED="1", **env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout: float = 400) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _epochs_logged(home: Path, sweep: str) -> dict[str, int]:
    """Epochs each point run of the sweep has logged so far, by point name."""
    from mlflow.tracking import MlflowClient

    try:
        runs = point_runs(home, sweep)
    except Exception:  # the store or experiment is not there yet
        return {}
    client = MlflowClient(tracking_uri=f"sqlite:///{home}/mlflow.db")
    return {r.info.run_name: len(client.get_metric_history(r.info.run_id, "val/top1")) for r in runs}


def _act_when_logged(home: Path, sweep: str, env: dict, actions: dict, timeout: float = 300) -> dict:
    """Run each action {point name part: (epochs, command...)} on the SLURM job of the point
    whose name contains that part, once it has logged that many epochs; returns {part: job id}."""
    done, deadline = {}, time.monotonic() + timeout
    while len(done) < len(actions):
        assert time.monotonic() < deadline, f"points {set(actions) - set(done)} of {sweep} never got that far"
        logged = _epochs_logged(home, sweep)
        for part, (epochs, *command) in actions.items():
            if part not in done and any(part in name and n >= epochs for name, n in logged.items()):
                (run,) = [r for r in point_runs(home, sweep) if part in r.info.run_name]
                done[part] = run.data.tags["job_id"]
                _slurm(env, *command, done[part])
        time.sleep(0.5)
    return done


def _wait_idle(env: dict, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while _slurm(env, "squeue", "-h", "-o", "%i").strip():
        assert time.monotonic() < deadline, _slurm(env, "squeue")
        time.sleep(1)


def _reference(home: Path, *point: str) -> dict:
    """The point trained uninterrupted, in one process, outside SLURM (its own store: it may run
    while the drill's sweep creates its store)."""
    home = home / "reference"
    home.mkdir()
    result = run_cli(*point, "sweep=reference", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = point_runs(home, "reference")
    return run.data.metrics


# The smoke sweep at depth 14 (4 points: width 0.25,0.5 x resolution 12,16), deterministic, as one
# array. One module-scoped run serves three drills, each asserted by its own test: while it runs,
# one task is preempted (`scontrol requeue`) and another cancelled (`scancel`); then the sweep is
# run again, as a user would after a cancel.
SMOKE = ["--config-dir", "sweeps", "--config-name", "smoke", "model.depth=14", *EXACT, "recipe.epochs=8",
         "data.synthetic_images=1000"]
PREEMPTED, CANCELLED = "w=0.5 d=14 r=16", "w=0.5 d=14 r=12"


@pytest.fixture(scope="module")
def drills(cluster, tmp_path_factory):
    home = tmp_path_factory.mktemp("drills")
    proc = _submit(home, cluster, *SMOKE, "hydra.launcher.timeout_min=10", "sweep=drills")
    jobs = _act_when_logged(home, "drills", cluster, {PREEMPTED: (2, "scontrol", "requeue"),
                                                     CANCELLED: (1, "scancel")})
    reference = _reference(home, *SMOKE, "model.width=0.5", "data.resolution=16")  # PREEMPTED
    first = _finish(proc)
    _wait_idle(cluster)  # the sweep's launcher reports the cancelled task; the others go on
    runs = {r.info.run_name: r for r in point_runs(home, "drills")}
    rerun = _finish(_submit(home, cluster, *SMOKE, "hydra.launcher.timeout_min=10", "sweep=drills"))
    return {"home": home, "first": first, "runs": runs, "jobs": jobs, "reference": reference, "rerun": rerun,
            "again": {r.info.run_name: r for r in point_runs(home, "drills")}}


def _named(runs: dict, part: str):
    (name,) = [n for n in runs if part in n]
    return runs[name]


def test_the_smoke_sweep_runs_as_a_slurm_array(cluster, drills):
    runs, again = drills["runs"], drills["again"]
    assert len(runs) == 4 and len({r.data.tags["point_key"] for r in runs.values()}) == 4, "each point recorded once"
    array_ids = {r.data.tags["array_job_id"] for r in runs.values()}
    assert len(array_ids) == 1 and {r.data.tags["array_task_id"] for r in runs.values()} == {"0", "1", "2", "3"}
    assert {r.data.tags["scheduler"] for r in runs.values()} == {"slurm"}
    assert {r.data.tags["launcher"] for r in runs.values()} == {"submitit_slurm"}
    finished = [n for n, r in runs.items() if CANCELLED not in n]
    assert [runs[n].info.status for n in finished] == ["FINISHED"] * 3, drills["first"][1][-3000:]
    states = _slurm(cluster, "sacct", "-n", "-X", "-j", array_ids.pop(), "-o", "JobID%20,State%20").splitlines()
    by_task = {line.split()[0].rsplit("_", 1)[1]: line.split()[1] for line in states if line.strip()}
    cancelled_task = _named(runs, CANCELLED).data.tags["array_task_id"]
    assert by_task == {t: "CANCELLED" if t == cancelled_task else "COMPLETED" for t in "0123"}, states
    assert len(again) == 4 and all(r.info.status == "FINISHED" for r in again.values())  # after the rerun


def test_a_preempted_point_scontrol_requeue_resumes_in_the_same_run(drills):
    run = _named(drills["runs"], PREEMPTED)
    assert run.info.status == "FINISHED" and run.data.tags.get("restarts") == "1", run.data.tags
    assert run.data.tags["job_id"] == drills["jobs"][PREEMPTED]
    assert {k: run.data.metrics[k] for k in COMPARED} == {k: drills["reference"][k] for k in COMPARED}


def test_scancel_of_one_task_kills_only_that_point_and_a_rerun_trains_only_it(drills):
    cancelled = _named(drills["runs"], CANCELLED)
    assert cancelled.info.status == "KILLED" and "SIGTERM" in cancelled.data.tags["status_reason"], \
        drills["first"][1][-3000:]
    code, out = drills["rerun"]
    assert code == 0, out[-3000:]
    assert "4 points: 1 finished, 3 skipped, 0 failed" in out
    assert "slurm: this process waits for the whole array" in out  # what the launching process is for
    assert "measured alone: not on this node" in out and "make measure SWEEP=drills STORE=sqlite:///" in out
    assert _named(drills["again"], CANCELLED).info.run_id == cancelled.info.run_id


def test_a_point_past_its_time_limit_is_requeued_and_resumes_in_the_same_run(cluster, tmp_path):
    """timeout_min=2 with the signal 60 s before: SLURM signals the job 30-60 s in (its time-limit
    check runs every 30 s), submitit checkpoints and requeues it, and the point resumes from its
    last epoch inside the same MLflow run, ending where an uninterrupted run ends."""
    point = [*POINT, "recipe.epochs=40", "data.synthetic_images=8000"]  # ~1.5 s an epoch: past the signal
    proc = _submit(tmp_path, cluster, *point, "hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=60",
                   "hydra.launcher.max_num_timeout=6", "sweep=timeout")
    reference = _reference(tmp_path, *point)  # meanwhile, on the other core
    code, out = _finish(proc)
    assert code == 0, out[-3000:]
    (run,) = point_runs(tmp_path, "timeout")
    assert run.info.status == "FINISHED" and int(run.data.tags.get("restarts", 0)) >= 1, (run.data.tags, out[-2000:])
    assert {k: run.data.metrics[k] for k in COMPARED} == {k: reference[k] for k in COMPARED}, run.data.tags


def test_a_point_on_two_slurm_tasks_trains_as_two_local_processes_do(cluster, tmp_path):
    """hydra.launcher.tasks_per_node=2 with trainer.processes=2: the job's two tasks train the
    point together (DDP over gloo, ranks and rendezvous from submitit), exactly as the two
    processes a local job starts."""
    point = [*POINT, "recipe.epochs=3", "data.synthetic_images=1000", "trainer.processes=2"]
    code, out = _finish(_submit(tmp_path, cluster, *point, "hydra.launcher.tasks_per_node=2",
                                "hydra.launcher.timeout_min=10", "sweep=tasks"))
    assert code == 0, out[-3000:]
    local = run_cli(*point, "sweep=local", home=tmp_path)
    assert local.returncode == 0, local.stderr[-3000:]
    (run,), (ref,) = point_runs(tmp_path, "tasks"), point_runs(tmp_path, "local")
    assert run.info.status == "FINISHED" and run.data.tags["processes"] == "2" and run.data.tags["scheduler"] == "slurm"
    assert {k: run.data.metrics[k] for k in COMPARED} == {k: ref.data.metrics[k] for k in COMPARED}
