"""What a user sees around the points: the sweep's progress and ETA, the experiment MLflow's UI
opens on (and the rename of experiments earlier versions made), the links `make ui` prints."""
from __future__ import annotations

import io
import json

import pytest
from mlflow.tracking import MlflowClient

from analysis.load import load_runs
from study.record.contract import find_experiment
from study.record.tracking import MlflowTracker
from study.record.ui import sweep_links
from study.record.contract import runs_link, ui_base
from study.record.view import VIEW_TAG
from study.sweep import handoff, progress
from tests.conftest import compose_cfg


def _ended(sweep_dir, job: int, statuses: list[str]) -> None:
    (sweep_dir / str(job)).mkdir(parents=True, exist_ok=True)
    handoff.write_outcomes(sweep_dir / str(job), [{"name": f"p{job}", "status": s, "seconds": 1.0} for s in statuses])


def test_eta_scales_the_time_spent_by_the_compute_left_and_skipped_points_cost_nothing(tmp_path):
    handoff.write_grid(tmp_path, 4, [1.0, 1.0, 3.0, 5.0], started=1000.0)
    _ended(tmp_path, 0, ["SKIPPED"])
    assert progress.snapshot(tmp_path, now=1010.0).eta_s is None  # nothing trained yet: no rate
    _ended(tmp_path, 1, ["FINISHED"])
    s = progress.snapshot(tmp_path, now=1010.0)
    assert s.done == 2 and s.counts == {"skipped": 1, "finished": 1}
    assert s.done_share == pytest.approx(0.2)
    assert s.eta_s == pytest.approx(10.0 * 8 / 1)  # 10 s bought 1 unit; 8 units are left
    assert "2/4 points (1 finished, 1 skipped, 0 failed), 20% of compute, ETA 1m20s" in progress.bar_text(s, "x")


def test_the_eta_follows_a_power_of_the_weight_fitted_on_the_gaps_between_points(tmp_path):
    weights = [1.0, 4.0, 9.0, 16.0, 25.0, 36.0, 49.0]
    handoff.write_grid(tmp_path, 7, weights, started=0.0)
    ended = 100.0  # the first job's end holds the sweep's start-up: never fitted
    for job, w in enumerate(weights[:4]):
        ended += 3.0 * w ** 0.5 if job else 0.0
        (tmp_path / str(job)).mkdir()
        (tmp_path / str(job) / handoff.OUTCOMES_FILE).write_text(
            json.dumps([{"name": f"p{job}", "status": "FINISHED", "seconds": 1.0, "ended": ended}]))
    s = progress.snapshot(tmp_path, now=ended)
    assert s.eta_s == pytest.approx(3.0 * (5 + 6 + 7))  # 3 x sqrt(w) for each point left


def test_weights_follow_flops_epochs_and_seeds():
    base = _study("model.width=0.25", "model.depth=14", "data.resolution=12", "recipe.epochs=1")
    longer = _study("model.width=0.25", "model.depth=14", "data.resolution=12", "recipe.epochs=4", "seeds=2")
    wider = _study("model.width=0.5", "model.depth=14", "data.resolution=12", "recipe.epochs=1")
    assert progress.weight(longer) == pytest.approx(8 * progress.weight(base))
    assert progress.weight(wider) > 2 * progress.weight(base)  # channels^2 in the convolutions


def _study(*overrides):
    from study.settings import config

    return config.validate(compose_cfg("config", list(overrides)))


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_progress_is_a_plain_line_per_tenth_of_the_compute(tmp_path):
    handoff.write_grid(tmp_path, 20, [1.0] * 20)
    out = io.StringIO()
    console = progress.Console(out)
    for job in range(20):
        _ended(tmp_path, job, ["FINISHED"])
        console.point_ended(tmp_path, job, "x")
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in out.getvalue()
    assert lines[-1].startswith("sweep x [########################] 20/20 points (20 finished, 0 skipped, 0 failed), "
                                "done in")


def test_on_a_terminal_the_bar_is_redrawn_in_place_and_lines_clear_it(tmp_path):
    handoff.write_grid(tmp_path, 2, [1.0, 1.0])
    out = _Tty()
    console = progress.Console(out)
    _ended(tmp_path, 0, ["FINISHED"])
    console.point_ended(tmp_path, 0, "x")
    console.line("[2/2] a point")
    assert out.getvalue().startswith(progress.CLEAR + "sweep x [############------------] 1/2 points")
    assert out.getvalue().endswith(progress.CLEAR + "[2/2] a point\n")
    assert console.label(tmp_path, "x").startswith("sweep 1/2 50% ETA ")


def test_an_experiment_of_an_earlier_version_is_renamed_and_tagged_and_keeps_its_runs(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    old = client.create_experiment("default")  # named after the bare sweep, untagged
    parent = client.create_run(old, run_name="default", tags={"role": "parent", "sweep": "default"})
    child = client.create_run(old, run_name="w=1 d=14 r=12 e=1", tags={
        "mlflow.parentRunId": parent.info.run_id, "point_key": "k", "run_key": "k-s0", "sweep": "default"})
    client.log_param(child.info.run_id, "model.width", "1")
    client.log_metric(child.info.run_id, "top1", 0.5)
    client.set_terminated(child.info.run_id)
    assert load_runs("default", uri).table.shape[0] == 1  # analysis reads a store no new version opened
    tracker = MlflowTracker(uri, "default")
    assert tracker.experiment_id == old and tracker.parent_id == parent.info.run_id
    experiment = client.get_experiment(old)
    assert experiment.name == "sweep/default"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.tags["sweep"] == "default"
    assert find_experiment(client, "default").experiment_id == old
    assert load_runs("default", uri).table.shape[0] == 1
    # an experiment of the same name that is not a sweep's is left alone
    other = client.create_experiment("smoke")
    assert MlflowTracker(uri, "smoke").experiment_id != other
    assert client.get_experiment(other).name == "smoke"


def test_make_ui_lists_every_sweep_with_the_link_to_its_runs(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    old = client.create_experiment("adhoc")
    client.create_run(old, run_name="adhoc", tags={"role": "parent", "sweep": "adhoc"})
    new = MlflowTracker(uri, "smoke").experiment_id
    links = sweep_links(uri, "http://127.0.0.1:5999")
    query = "viewStateShareKey=scaling-study&workflowType=machine_learning"
    assert links == [("adhoc", 0, f"http://127.0.0.1:5999/#/experiments/{old}/runs?{query}"),
                     ("smoke", 0, f"http://127.0.0.1:5999/#/experiments/{new}/runs?{query}")]
    assert client.get_experiment(old).name == "sweep/adhoc"  # renamed on the way
    assert VIEW_TAG in client.get_experiment(old).tags  # and given the study's view


def test_a_tracking_servers_link_is_its_own_without_credentials():
    assert ui_base("http://alice:s3cret@mlflow.lab:5001/") == "http://mlflow.lab:5001"
    assert ui_base("sqlite:////x/mlflow.db", 5055) == "http://127.0.0.1:5055"
    assert runs_link("http://h:1", "7") == \
        "http://h:1/#/experiments/7/runs?viewStateShareKey=scaling-study&workflowType=machine_learning"


def test_the_automatic_report_is_settled_before_training_and_never_keys_a_point():
    from study.settings import config
    from study.settings import grid

    with pytest.raises(config.ConfigError, match=r"analysis.replicates=10: must be >= 1000"):
        config.validate(compose_cfg("config", ["analysis.replicates=10"]))
    assert grid.point_key(_study("analysis.auto=false", "analysis.replicates=2000")) == grid.point_key(_study())
