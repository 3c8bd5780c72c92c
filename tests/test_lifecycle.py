"""The point lifecycle (study/point/lifecycle.py) in one process: ownership, per-sweep files, records
that survive a failing store, provenance and redaction, stores written before key version 1."""
from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from study.point import device as devices
from study.point.files import PointFiles
from study.point.lifecycle import run_point
from study.record import provenance
from study.record.tracking import MlflowTracker, NullTracker
from study.settings import config, grid
from study.train.checkpoint import Checkpoint
from tests.conftest import ROOT, TINY, compose_cfg, point_runs, run_cli

CPU = torch.device("cpu")


def tiny(*extra: str) -> config.StudyConfig:
    return devices.resolve(config.validate(compose_cfg("config", [*TINY, *extra])), CPU)


def quiet(_line: str) -> None:
    pass


class FlakyTracker(NullTracker):
    """A store that fails the calls named in `down` (method -> how many times) the way a
    restarting server does."""

    def __init__(self, **down: int) -> None:
        super().__init__()
        self.down = down

    def _maybe_fail(self, method: str) -> None:
        if self.down.get(method, 0) > 0:
            self.down[method] -= 1
            raise ConnectionError("API request failed: Connection refused")

    def log_epoch(self, epoch, metrics, timestamp_ms=None):
        self._maybe_fail("log_epoch")
        super().log_epoch(epoch, metrics)

    def finish_point(self, metrics, artifacts, epochs=()):
        self._maybe_fail("finish_point")
        super().finish_point(metrics, artifacts, epochs)


def test_a_store_outage_during_the_epochs_pauses_logging_not_training(study_home):
    tracker, lines = FlakyTracker(log_epoch=2), []
    study = tiny("recipe.epochs=3")
    outcome = run_point(study, tracker=tracker, device=CPU, echo=lines.append)
    assert outcome["status"] == "FINISHED", lines
    assert [e for e, _ in tracker.runs[-1]["epochs"]] == [1, 2, 3]  # every epoch, in order, once
    assert any("logging paused, training goes on" in line for line in lines)
    assert any("logging resumed" in line for line in lines)


class LostAnswer(MlflowTracker):
    """A server that stores an epoch's metrics, then dies before it answers (once)."""
    lost = 1

    def log_epoch(self, epoch, metrics, timestamp_ms=None):
        super().log_epoch(epoch, metrics, timestamp_ms)
        if self.lost:
            self.lost -= 1
            raise ConnectionError("Connection reset by peer")


def test_an_epoch_the_store_took_before_its_answer_was_lost_is_recorded_once(study_home):
    tracker = LostAnswer(f"sqlite:///{study_home}/mlflow.db", "lost", artifact_root=str(study_home / "mlartifacts"),
                         retry_s=0)  # artifacts under the test's home, never ./mlruns in the checkout
    outcome = run_point(tiny("recipe.epochs=3", "sweep=lost"), tracker=tracker, device=CPU, echo=quiet)
    assert outcome["status"] == "FINISHED"
    steps = sorted(m.step for m in tracker.client.get_metric_history(outcome["run_id"], "train/loss"))
    assert steps == [1, 2, 3]  # epoch 1 was sent twice: the same metric points, kept once


class KilledBeforeParams(MlflowTracker):
    """A process SIGKILLed after MLflow created the point's run and before its params arrived."""

    def start_point(self, name, params, tags):
        super().start_point(name, {}, tags)
        raise KeyboardInterrupt("killed")


def test_a_run_killed_before_its_params_gets_them_when_the_point_restarts_in_it(study_home):
    study, uri = tiny("recipe.epochs=1", "sweep=bare"), f"sqlite:///{study_home}/mlflow.db"
    root = str(study_home / "mlartifacts")
    with pytest.raises(KeyboardInterrupt):
        run_point(study, tracker=KilledBeforeParams(uri, "bare", artifact_root=root), device=CPU, echo=quiet)
    outcome = run_point(study, tracker=MlflowTracker(uri, "bare", artifact_root=root), device=CPU, echo=quiet)
    [run] = point_runs(study_home, "bare")
    assert run.info.run_id == outcome["run_id"] and run.data.tags["restarted"] == "1"
    assert run.data.params["recipe.epochs"] == "1" and run.data.params["point_key"] == run.data.tags["point_key"]


def test_a_point_killed_between_its_last_epoch_and_its_record_logs_each_epoch_once(study_home, monkeypatch):
    """The last epoch has no checkpoint: a kill while the point is measured trains it again from
    the one before, and the store must still hold each epoch once (CI saw [1, 2, 3, 3])."""
    from mlflow.tracking import MlflowClient

    from study.point import lifecycle

    study, uri = tiny("recipe.epochs=3", "sweep=last"), f"sqlite:///{study_home}/mlflow.db"
    tracker = MlflowTracker(uri, "last", artifact_root=str(study_home / "mlartifacts"))
    measure = lifecycle._measure

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while the point is measured")

    monkeypatch.setattr(lifecycle, "_measure", killed)
    with pytest.raises(KeyboardInterrupt):
        run_point(study, tracker=tracker, device=CPU, echo=quiet)
    monkeypatch.setattr(lifecycle, "_measure", measure)
    lines = []
    run_point(study, tracker=tracker, device=CPU, echo=lines.append)
    [run] = point_runs(study_home, "last")
    assert run.info.status == "FINISHED" and any("resuming" in line for line in lines), lines
    steps = [m.step for m in MlflowClient(uri).get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == [1, 2, 3]


SIGTERM_TWICE = """
import os, signal, sys
from study.point.lifecycle import run_point
from study.record.tracking import MlflowTracker
from tests.test_lifecycle import CPU, quiet, tiny

class Stopped(MlflowTracker):
    def log_epoch(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # the point is stopped mid-training
    def fail_point(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # and stopped again while its end is recorded
        super().fail_point(*args, **kwargs)

home = sys.argv[1]
run_point(tiny("sweep=stopped"), tracker=Stopped(f"sqlite:///{home}/mlflow.db", "stopped",
          artifact_root=f"{home}/mlartifacts"), device=CPU, echo=quiet)
"""


def test_a_sigterm_while_the_point_records_its_end_waits_for_the_record(tmp_path):
    """A point's launcher sends SIGTERM a moment after another of its processes died, or scancel
    comes twice: the second signal must not cut off the record of the first (CI saw a run left
    RUNNING by a killed DDP point)."""
    ended = subprocess.run([sys.executable, "-c", SIGTERM_TWICE, str(tmp_path)], cwd=ROOT, capture_output=True,
                           text=True, timeout=300, env=dict(os.environ, STUDY_HOME=str(tmp_path)))
    assert ended.returncode == -signal.SIGTERM, ended.stderr[-3000:]
    [run] = point_runs(tmp_path, "stopped")
    assert run.info.status == "KILLED" and "SIGTERM" in run.data.tags["status_reason"]


def test_a_store_failure_after_training_keeps_the_training_and_the_next_run_records_it(study_home):
    study = tiny("recipe.epochs=3")
    files = PointFiles(study.sweep, grid.run_key(study))
    tracker = FlakyTracker(finish_point=1)
    first = run_point(study, tracker=tracker, device=CPU, echo=quiet)
    assert first["status"] == "UNRECORDED"
    assert files.pending_record()["metrics"]["top1"] >= 0 and files.checkpoint.path.exists()
    assert tracker.runs[-1]["status"] == "RUNNING" and not tracker.finished

    lines = []
    second = run_point(study, tracker=tracker, device=CPU, echo=lines.append)
    assert second["status"] == "FINISHED" and second["run_id"] == first["run_id"], lines
    run = tracker.runs[-1]
    assert run["status"] == "FINISHED" and run["tags"]["recorded_late"] == "true"
    assert run["metrics"]["top1"] == second["top1"] and len(tracker.runs) == 1  # recorded, not retrained
    assert any("recorded the training kept" in line for line in lines)
    assert files.pending_record() is None and not files.checkpoint.path.exists()
    assert run_point(study, tracker=tracker, device=CPU, echo=quiet)["status"] == "SKIPPED"


def test_a_point_owned_by_a_live_process_is_left_to_it(study_home):
    study = tiny("recipe.epochs=1", "force=true")
    owner = PointFiles(study.sweep, grid.run_key(study))
    assert owner.acquire() is None
    tracker, lines = NullTracker(), []
    try:
        outcome = run_point(study, tracker=tracker, device=CPU, echo=lines.append)
    finally:
        owner.release()
    assert outcome["status"] == "BUSY" and "pid" in outcome["owner"]
    assert not tracker.runs, "a live point's run is never adopted or duplicated"
    assert "being trained right now by" in lines[0]
    assert run_point(study, tracker=tracker, device=CPU, echo=quiet)["status"] == "FINISHED"  # lease released


def test_checkpoints_belong_to_their_sweep(study_home):
    study = tiny("recipe.epochs=2")
    other = PointFiles("another_sweep", grid.run_key(study))
    other.checkpoint.save({"epoch": 1, "run_id": "run-of-another-sweep"})
    outcome = run_point(study, tracker=NullTracker(), device=CPU, echo=quiet)
    assert outcome["status"] == "FINISHED"
    assert other.checkpoint.load()["run_id"] == "run-of-another-sweep"  # untouched


def test_every_run_says_which_code_and_packages_trained_it(study_home):
    tracker = NullTracker()
    run_point(tiny("recipe.epochs=1"), tracker=tracker, device=CPU, echo=quiet)
    tags = tracker.runs[-1]["tags"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert tags["git_sha"] == head, "the commit of the code that ran, wherever STUDY_HOME is"
    assert tags["git_dirty"] in ("true", "false") and tags["version.torch"] == torch.__version__
    assert {"version.timm", "version.mlflow"} <= tags.keys() and tags["key_version"] == str(grid.KEY_VERSION)
    assert provenance.tags() is provenance.tags()  # looked up once per process


def test_untuned_points_do_not_log_the_tuning_block(study_home):
    tracker = NullTracker()
    run_point(tiny("recipe.epochs=1", "tune.storage=postgresql://lab:pw@db/optuna"), tracker=tracker,
              device=CPU, echo=quiet)
    assert not [k for k in tracker.runs[-1]["params"] if k.startswith("tune.")]


def test_a_store_written_before_key_version_1_is_recognised(tmp_path):
    with gzip.open(ROOT / "tests" / "data" / "store_v0.db.gz") as src, open(tmp_path / "mlflow.db", "wb") as dst:
        shutil.copyfileobj(src, dst)  # written by the code before this contract: 2 finished points
    args = ["--multirun", "--config-dir", "sweeps", "--config-name", "smoke", "model.width=0.25", "model.depth=14",
            "data.resolution=12", "recipe.epochs=1,2", "data.synthetic_images=400", "trainer.latency_repeats=2",
            "trainer.precision=fp32", "sweep=legacy"]  # written on a CPU where auto was fp32
    again = run_cli(*args, home=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 points: 0 finished, 2 skipped" in again.stdout
    runs = point_runs(tmp_path, "legacy")
    assert len(runs) == 2 and {r.data.tags["legacy_run_key"] for r in runs} == \
        {"fafffd1db287f490-s0", "c652aff62ffc3807-s0"}
    point = [a for a in args[5:-1] if not a.startswith("recipe.epochs")] + ["recipe.epochs=1"]
    study = devices.resolve(config.validate(compose_cfg("smoke", point)), CPU)
    assert grid.run_key(study) in {r.data.tags["run_key"] for r in runs}  # re-tagged with the current key


SECRET = "S3cr3tPw"


@pytest.mark.slow
def test_no_password_reaches_the_store_the_outputs_or_the_console(tmp_path):
    uri = f"postgresql://lab:{SECRET}@127.0.0.1:9/optuna"
    sweep = run_cli("--multirun", *TINY, "recipe.epochs=1", "model.depth=14,26", f"tune.storage={uri}",
                    f"+vars.db={uri}", "sweep=secrets", home=tmp_path)
    single = run_cli(*TINY, "recipe.epochs=1", f"tune.storage={uri}", "sweep=secrets", "force=true", home=tmp_path)
    for done in (sweep, single):
        assert done.returncode == 0, done.stderr[-3000:]
        assert SECRET not in done.stdout + done.stderr
    assert len(point_runs(tmp_path, "secrets")) == 3
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaked, leaked
    assert any(b"lab:***@" in p.read_bytes() for p in tmp_path.rglob("config.yaml"))  # redacted, not dropped
