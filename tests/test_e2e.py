"""End to end, as a user runs it: a tiny sweep on the synthetic set into a temporary store,
the full run record checked field by field, finished points skipped, and `make point`."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from study.record.contract import find_experiment
from tests.conftest import ROOT, point_runs, run_cli

TINY_SWEEP = ["--multirun", "--config-dir", "sweeps", "--config-name", "smoke",
              "model.width=0.25", "model.depth=14", "data.resolution=12", "recipe.epochs=1,2",
              "data.synthetic_images=400", "trainer.latency_repeats=2"]
PARAMS = {"model.width", "model.depth", "model.se", "model.resnet_d", "data.name", "data.resolution",
          "recipe.epochs", "recipe.batch_size", "recipe.weight_decay", "trainer.precision", "seed",
          "point_key", "data.train_images", "data.test_images", "data.minival_images"}
FINAL = {"top1", "top5", "error", "minival/top1", "flops", "params", "activations", "latency_ms",
         "latency_batch", "train_step_ms", "train_img_per_s", "peak_mem_mb", "train_time_s"}
PER_EPOCH = {"train/loss", "val/top1", "lr"}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    first = run_cli(*TINY_SWEEP, home=home)
    assert first.returncode == 0, first.stderr[-3000:]
    return home, first


def _client(home):
    return MlflowClient(tracking_uri=f"sqlite:///{home}/mlflow.db")


def _runs(home):
    client = _client(home)
    exp = find_experiment(client, "smoke")
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def test_sweep_prints_a_line_per_point_and_a_summary(swept):
    home, first = swept
    assert "[1/2] w=0.25 d=14 r=12 e=1  top1=" in first.stdout
    assert "[2/2] w=0.25 d=14 r=12 e=2  top1=" in first.stdout
    assert "2 points: 2 finished, 0 skipped, 0 failed" in first.stdout
    # Hydra's launch lines are silenced by conf/hydra/hydra_logging/study.yaml: one line per point
    assert "[HYDRA]" not in first.stdout and "#0 :" not in first.stdout
    assert len([line for line in first.stdout.splitlines() if line.startswith("[")]) == 2
    # not on a terminal: the progress as plain lines, the last one when the sweep is done
    assert "sweep smoke [########################] 2/2 points (2 finished, 0 skipped, 0 failed), done in" \
        in first.stdout
    # too small for any decision: the report is made all the same, and says so
    assert "report: the sweep is too small to decide depth vs width" in first.stdout
    assert "no depth-vs-width decision: too few finished configurations" in first.stdout
    assert (home / "reports" / "smoke" / "report.html").exists()
    experiment = find_experiment(_client(home), "smoke")
    assert f"browse: make ui, then open http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs" \
           "?viewStateShareKey=scaling-study&workflowType=machine_learning" in first.stdout


def test_the_experiment_opens_in_mlflows_model_training_mode(swept):
    home, _ = swept
    experiment = find_experiment(_client(home), "smoke")
    assert experiment.name == "sweep/smoke"  # never mistaken for MLflow's own `Default`
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    note = experiment.tags["mlflow.note.content"]
    assert "- `recipe.epochs`: 1,2" in note and "- `model.width`: 0.25" in note  # the grid as launched
    assert "make sweep SWEEP=smoke" in note and "2 grid points on `synthetic`" in note


def test_one_parent_run_with_one_child_per_point(swept):
    home, _ = swept
    _, runs = _runs(home)
    parents = [r for r in runs if r.data.tags.get("role") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert parents[0].info.status == "FINISHED"


def test_every_field_of_the_run_record(swept):
    home, _ = swept
    client, runs = _runs(home)
    for run in (r for r in runs if r.data.tags.get("mlflow.parentRunId")):
        assert run.info.status == "FINISHED"
        assert PARAMS <= run.data.params.keys()
        assert FINAL <= run.data.metrics.keys()
        assert {"point_key", "sweep", "git_sha"} <= run.data.tags.keys()
        assert run.data.tags["point_key"] == run.data.params["point_key"]
        assert run.data.tags["sweep"] == "smoke"
        epochs = int(run.data.params["recipe.epochs"])
        for key in PER_EPOCH:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert steps == list(range(1, epochs + 1)), key
        m = run.data.metrics
        assert 0 <= m["top1"] <= m["top5"] <= 1 and m["error"] == pytest.approx(1 - m["top1"])
        assert m["flops"] > 0 and m["latency_ms"] > 0 and m["latency_batch"] == 32
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "record.json"} <= artifacts
        record = json.loads(open(client.download_artifacts(run.info.run_id, "record.json")).read())
        assert record["metrics"]["top1"] == pytest.approx(m["top1"])


def test_every_point_is_measured_alone_when_the_sweep_ends(swept, tmp_path):
    """The measurement phase (study.measure.alone): the training step of each architecture, alone, on
    every finished point run; analysis reads it as the latency; make measure measures again."""
    from analysis.load import LATENCY_ALONE, load_runs

    home, first = swept
    # one architecture (1 and 2 epochs share it), measured once, logged on both points
    assert "measured alone: 1 architecture(s) of 2 point run(s) in" in first.stdout
    client, runs = _runs(home)
    points = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len({r.data.metrics["step_latency_ms"] for r in points}) == 1
    for run in points:
        assert run.data.metrics["step_batch"] == 128 and run.data.metrics["step_latency_ms"] > 0
        assert 0 < run.data.metrics["step_peak_mem_mb"] < run.data.metrics["peak_mem_mb"]
        assert run.data.tags["measure.threads"] and run.data.tags["measure.cpu"]
    machine = points[0].data.tags["measure.machine"]
    assert machine.startswith("cpu-") and all(r.data.tags["measure.machine"] == machine for r in points)
    assert points[0].data.metrics[f"alone/{machine}/step_latency_ms"] == points[0].data.metrics["step_latency_ms"]
    loaded = load_runs("smoke", f"sqlite:///{home}/mlflow.db")
    assert loaded.latency == LATENCY_ALONE.format(machine=machine)
    assert (loaded.table["latency_ms"] == loaded.table["step_latency_ms"]).all()
    again = subprocess.run([sys.executable, "-m", "study.measure.alone", "--sweep", "smoke", "--store",
                            f"sqlite:///{home}/mlflow.db", "--force"], cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0 and "measured 1 architecture(s) of 2 point run(s) of smoke alone" in again.stdout
    assert f"--measured-on {machine}" in again.stdout
    unknown = subprocess.run([sys.executable, "-m", "analysis", "recommend", "--sweep", "smoke", "--tracking-uri",
                              f"sqlite:///{home}/mlflow.db", "--epochs", "1", "--latency-ms", "1e9",
                              "--measured-on", "cuda-none"], cwd=ROOT, capture_output=True, text=True)
    assert unknown.returncode == 2 and f"measured on: {machine} (2 of 2 runs)" in unknown.stderr
    history = client.get_metric_history(points[0].info.run_id, "step_latency_ms")
    assert len(history) == 2  # measured again on this machine: the latest value is the run's


def test_second_sweep_skips_every_finished_point(swept):
    home, _ = swept
    again = run_cli(*TINY_SWEEP, "analysis.auto=false", home=home)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("skipped: finished as run") == 2
    assert "0 finished, 2 skipped" in again.stdout
    assert "2/2 points (0 finished, 2 skipped, 0 failed), done in" in again.stdout
    assert "report:" not in again.stdout  # analysis.auto=false
    _, runs = _runs(home)
    assert len(runs) == 3  # parent + 2 children, nothing added


def test_make_point_adds_exactly_one_run(swept):
    home, _ = swept
    _, before = _runs(home)
    point = ("model.width=0.25 model.depth=14 data.resolution=12 recipe.epochs=1 "
             "data.synthetic_images=400 trainer.latency_repeats=2")
    env = dict(os.environ, STUDY_HOME=str(home))
    done = subprocess.run(["make", "-s", "point", "SWEEP=smoke", f"POINT={point}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "[1/1] w=0.25 d=14 r=12 e=1  top1=" in done.stdout
    _, after = _runs(home)
    assert len(after) == len(before) + 1
    new = [r for r in after if r.info.run_id not in {b.info.run_id for b in before}][0]
    keys = {r.data.tags.get("point_key") for r in before}
    assert new.data.tags["point_key"] in keys  # the same grid point, run again


def test_diverging_point_is_recorded_failed_with_its_reason(tmp_path):
    result = run_cli("data=synthetic", "data.synthetic_images=400", "data.resolution=12", "model.depth=14",
                     "model.width=0.25", "recipe.epochs=1", "recipe.lr_per_256=1e30", "sweep=diverge",
                     home=tmp_path)
    runs = point_runs(tmp_path, "diverge")
    assert len(runs) == 1 and runs[0].info.status == "FAILED", result.stdout[-2000:]
    assert runs[0].data.tags["status_reason"].startswith("diverged in fp32:")
    assert "FAILED: diverged in fp32" in result.stdout


def test_analysis_loads_the_record_as_typed_tables(swept):
    from analysis.load import by_configuration, load_runs

    home, _ = swept
    runs = load_runs("smoke", f"sqlite:///{home}/mlflow.db")
    table = runs.table
    assert len(table) >= 2 and runs.excluded.get("FAILED", 0) == 0
    assert table["model.width"].dtype.kind == "f" and table["recipe.epochs"].dtype.kind == "i"
    assert table["model.se"].dtype == bool
    configs = by_configuration(table)
    assert sorted(configs["recipe.epochs"]) == [1, 2]  # one row per configuration
    assert configs["n_seeds"].sum() == len(table)
    assert configs["error"].between(0, 1).all()


def test_analyze_writes_the_report_and_logs_it_to_the_parent_run(swept, tmp_path):
    import subprocess
    import sys

    home, _ = swept
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "analysis", "--sweep", "smoke", "--out", str(out),
                           "--replicates", "20"], cwd=ROOT, env=dict(os.environ, STUDY_HOME=str(home)),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("report.html", "report.md", "rules.json", "configurations.csv", "runs.csv",
                 "error_vs_flops_latency.png", "depth_vs_width.png", "resolution.png", "latency.png",
                 "error_edf.png", "extrapolation_parity.png"):
        assert (out / name).exists(), name
    rules = json.loads((out / "rules.json").read_text())
    assert any(w["code"] == "too_few" for w in rules["data_warnings"])  # 2 configurations, 1 seed
    assert "data:image/png;base64," in (out / "report.html").read_text()
    client, runs = _runs(home)
    parent = next(r for r in runs if r.data.tags.get("role") == "parent")
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/rules.json" in logged and "report/report.html" in logged


def test_a_point_outside_the_declared_grid_is_listed_and_left_out_of_every_fit(swept):
    """The README's rerun at another epoch budget used to add a regime to the report."""
    from analysis.load import load_runs

    home, _ = swept
    done = run_cli("--config-dir", "sweeps", "--config-name", "smoke", "force=true", "model.width=0.25",
                   "model.depth=14", "data.resolution=12", "recipe.epochs=3", "data.synthetic_images=400",
                   "trainer.latency_repeats=2", home=home)
    assert done.returncode == 0, done.stderr[-2000:]
    uri = f"sqlite:///{home}/mlflow.db"
    runs = load_runs("smoke", uri)
    assert sorted(runs.table["recipe.epochs"].unique()) == [1, 2]
    assert [o["why"] for o in runs.outside] == ["other epochs: recipe.epochs=3 (the study's: 1, 2)"]
    assert "the 2 points of the sweep's 1 declared grid" in runs.scope
    assert sorted(load_runs("smoke", uri, include_outside=True).table["recipe.epochs"].unique()) == [1, 2, 3]
    client, all_runs = _runs(home)
    parent = next(r for r in all_runs if r.data.tags.get("role") == "parent")
    grids = [a.path for a in client.list_artifacts(parent.info.run_id, "manifest")]
    assert len(grids) == 1 and grids[0].startswith("manifest/sweep-"), grids  # the sweep ran twice: one grid


LADDER_SMOKE = ["--multirun", "--config-dir", "sweeps", "--config-name", "recipe_ablation", "data=synthetic",
                "data.synthetic_images=400", "data.resolution=12", "model.depth=14", "model.width=0.25",
                "vars.short_epochs=1", "vars.long_epochs=2", "recipe.batch_size=32", "trainer.latency_repeats=2"]


@pytest.mark.slow
def test_recipe_ablation_ladder_runs_end_to_end_at_smoke_scale(tmp_path):
    result = run_cli(*LADDER_SMOKE, home=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "12 points: 12 finished, 0 skipped, 0 failed" in result.stdout
    assert "[12/12] w=0.25 d=14 r=12 e=2 ladder=11_random_resized_crop  top1=" in result.stdout
    client = _client(tmp_path)
    exp = find_experiment(client, "recipe_ablation")
    runs = {r.data.tags["mlflow.runName"].split("ladder=")[1]: r
            for r in client.search_runs([exp.experiment_id]) if "ladder=" in r.data.tags.get("mlflow.runName", "")}
    assert len(runs) == 12 and len({r.data.params["point_key"] for r in runs.values()}) == 12
    p = {rung: r.data.params for rung, r in runs.items()}
    assert p["00_baseline"]["recipe.schedule"] == "step" and p["01_cosine"]["recipe.schedule"] == "cosine"
    assert (p["01_cosine"]["recipe.epochs"], p["02_longer"]["recipe.epochs"]) == ("1", "2")
    assert "minival/top1_no_ema" in runs["03_ema"].data.metrics
    assert "minival/top1_no_ema" not in runs["02_longer"].data.metrics
    assert p["06_randaugment"]["recipe.randaugment_ops"] == "2" and p["05_stochastic_depth"]["recipe.randaugment_ops"] == "0"
    assert (p["08_weight_decay"]["recipe.weight_decay"], p["07_dropout"]["recipe.weight_decay"]) == ("4e-05", "0.0001")
    assert (p["09_se"]["model.se"], p["09_se"]["model.resnet_d"], p["10_resnet_d"]["model.resnet_d"]) == \
        ("True", "False", "True")
    assert (p["10_resnet_d"]["data.crop"], p["11_random_resized_crop"]["data.crop"]) == ("pad", "random_resized")
    assert p["11_random_resized_crop"]["data.eval_crop"] == "0.875"


@pytest.mark.slow
def test_rerunning_a_point_in_deterministic_mode_repeats_its_metrics_exactly(tmp_path):
    from tests.conftest import TINY

    point = [*TINY, "recipe=resnet_rs", "recipe.epochs=2", "trainer.deterministic=true", "force=true"]
    metrics = []
    for _ in range(2):
        result = run_cli(*point, home=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    client = _client(tmp_path)
    runs = [r for r in client.search_runs([find_experiment(client, "adhoc").experiment_id])
            if r.data.tags.get("role") != "parent"]
    assert len(runs) == 2
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "train/loss")
        metrics.append(({k: v for k, v in run.data.metrics.items() if k.split("/")[0] in ("top1", "top5", "minival", "error")},
                        [m.value for m in history]))
    assert metrics[0] == metrics[1]
    assert runs[0].data.params["recipe.randaugment_ops"] == "2" and "minival/top1_no_ema" in metrics[0][0]


@pytest.mark.slow
def test_seeds_run_as_separate_runs_sharing_the_point_key(tmp_path):
    from tests.conftest import TINY

    first = run_cli(*TINY, "recipe.epochs=1", "seeds=2", "sweep=seeds", home=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = point_runs(tmp_path, "seeds")
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    assert len({r.data.tags["point_key"] for r in runs}) == 1 and len({r.data.tags["run_key"] for r in runs}) == 2
    assert {r.info.status for r in runs} == {"FINISHED"}
    again = run_cli(*TINY, "recipe.epochs=1", "seeds=2", "sweep=seeds", home=tmp_path)
    assert again.stdout.count("skipped: finished") == 2
