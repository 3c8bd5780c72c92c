"""make decide (study/decide.py): the adaptive study trains its proposals through the sweep
machinery, checks its input before training, and survives a kill mid-round."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from study.record.contract import find_experiment
from study import decide
from study.settings import config, grid
from study.settings.config import ConfigError
from tests.conftest import CONF, ROOT, SWEEPS

SWEEP = "decide_smoke"


def _decide(home: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "study.decide", "--sweep", SWEEP, *args], cwd=ROOT,
                          env=dict(os.environ, STUDY_HOME=str(home)), capture_output=True, text=True,
                          timeout=timeout)


def _count_finished(home: Path) -> int:
    """Finished point runs so far, read while make decide writes the store (0 until it can be read)."""
    try:
        return int((_finished(home)["status"] == "FINISHED").sum())
    except Exception:
        return 0


def _finished(home: Path, sweep: str = SWEEP) -> pd.DataFrame:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{home}/mlflow.db")
    exp = find_experiment(client, sweep)
    runs = client.search_runs([exp.experiment_id], "tags.run_key != ''", max_results=1000) if exp else []
    return pd.DataFrame([{"run_id": r.info.run_id, "run_key": r.data.tags["run_key"], "status": r.info.status}
                         for r in runs], columns=["run_id", "run_key", "status"])


@pytest.mark.parametrize("text, kind, value", [("1x", "grids", 1.0), ("0.5x", "grids", 0.5), ("3e13", "flops", 3e13),
                                               ("90s", "seconds", 90), ("20m", "seconds", 1200),
                                               ("2h", "seconds", 7200)])
def test_budgets_in_grids_flops_or_wall_time(text, kind, value):
    assert decide.parse_budget(text) == (kind, value)


@pytest.mark.parametrize("text", ["0", "-1x", "ten", "5 days"])
def test_a_bad_budget_names_the_setting_and_what_is_allowed(text):
    with pytest.raises(ConfigError, match="BUDGET=.*allowed"):
        decide.parse_budget(text)


def test_a_proposed_point_has_the_same_identity_as_the_sweeps_own(tmp_path):
    """The point file make decide writes composes to the run key `make sweep` gives the same
    point, so the two skip each other's finished points."""
    row = pd.Series({"epochs": 1, "depth": 26, "width": 0.25, "resolution": 12, "seed": 1, "why": "a test"})
    name = decide.write_points(pd.DataFrame([row]), tmp_path)[0]
    config.register()
    keys = []
    for overrides in ([f"hydra.searchpath=[file://{CONF},file://{tmp_path}]", f"+{decide.GROUP}={name}"],
                      [f"hydra.searchpath=[file://{CONF}]", "model.depth=26", "model.width=0.25",
                       "data.resolution=12", "recipe.epochs=1", "seed=1"]):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(SWEEPS), version_base="1.3"):
            keys.append(grid.run_key(config.validate(compose(SWEEP, overrides=overrides))))
    assert keys[0] == keys[1]


def test_the_trace_scores_each_rounds_prediction_against_the_next_round(tmp_path):
    """A round keeps what it predicted for settling its open rules; the trace scores it against
    the next round's rule states (a trace from before predictions were kept scores nothing)."""
    trace = decide.Trace(tmp_path, "1")
    rounds = [({"a": 0.9, "b": 0.1}, {"a": False, "b": False}), ({"b": 0.3}, {"a": True, "b": False}),
              ({}, {"a": True, "b": True})]
    for n, (predicted, settled) in enumerate(rounds, 1):
        trace.add({"round": n, "spent_share": n / 10, "trained": 1, "seconds": 1.0, "stop": "",
                   "p_depth_better": {}, "predicted": predicted, "settled": settled})
    table = decide.settle_table(decide.Trace(tmp_path, "1").rounds)  # as a rerun reads it back
    assert [(c["bin"], c["n"], c["settled"]) for c in table] == [((0, 0.2), 1, 0.0), ((0.2, 0.4), 1, 1.0),
                                                                ((0.8, 1.0), 1, 1.0)]
    assert "rounds predicted P(settled) 0.8-1.0 for 1 rule(s): mean 0.90, settled 1.00" in decide.trace_text(trace)
    assert decide.settle_table([{"round": 1, "predicted": {"a": 0.5}}, {"round": 2}]) == []


def test_declared_grid_is_the_sweep_files_axes():
    GlobalHydra.instance().clear()
    declared = decide.declared_grid(decide.compose_sweep(SWEEP, []))
    assert len(declared) == 18 and set(declared["resolution"]) == {8, 12} and set(declared["epochs"]) == {1}


@pytest.mark.parametrize("args, message", [
    (["--sweep", "smoke"], "cannot fit the depth-vs-width surface"),             # 2 depths, 2 widths
    (["--sweep", "recipe_ablation"], "needs a grid over exactly"),               # sweeps the ladder
    (["--budget", "0x"], "BUDGET="),
    (["--rules", "regime,speed"], "rules="),
    (["model.se_ratio=5"], "model.se_ratio"),
])
def test_bad_input_stops_before_any_training(tmp_path, args, message):
    done = _decide(tmp_path, *args, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert not (tmp_path / "mlflow.db").exists() or _finished(tmp_path).empty


@pytest.mark.slow
def test_decide_killed_mid_round_continues_in_parallel_to_the_reports_statement(tmp_path):
    """make decide JOBS=2 SIGKILLed (its whole process group) once four points of its first round
    have finished; the rerun, packed (JOBS=auto), trains nothing twice, keeps the finished runs
    and goes on to the report's statement."""
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "study.decide", "--sweep", SWEEP, "--budget", "1x", "--jobs",
                                 "2"], cwd=ROOT, env=dict(os.environ, STUDY_HOME=str(tmp_path)), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline and _count_finished(tmp_path) < 4:
            time.sleep(1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = _finished(tmp_path)
    done_before = before[before["status"] == "FINISHED"]
    assert len(done_before) >= 4, (tmp_path / "killed.log").read_text()[-3000:]
    done = _decide(tmp_path, "--budget", "1x", "--jobs", "auto")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "round 1:" in out and "initial design" in out and "skipped" in out
    assert "packing: " in out and " packed, " in out  # the rounds go through hydra/launcher=packed
    stop = out.split("make decide stopped: ")[-1]
    assert stop.startswith(("every rule asked about is decided", "the budget is spent", "no candidate is worth"))
    runs = _finished(tmp_path)
    finished = runs[runs["status"] == "FINISHED"]
    assert len(finished) == finished["run_key"].nunique() >= 15  # each run key trained once
    assert set(done_before["run_id"]) <= set(finished["run_id"])  # finished runs kept, not redone
    # the final statement is the report's: make analyze on the same sweep says the same
    analyze = subprocess.run([sys.executable, "-m", "analysis", "--sweep", SWEEP, "--no-log"], cwd=ROOT,
                             env=dict(os.environ, STUDY_HOME=str(tmp_path)), capture_output=True, text=True)
    statement = [line for line in analyze.stdout.splitlines() if "epoch" in line]
    assert statement and all(line in out for line in statement)
    trace = pd.read_csv(tmp_path / "reports" / SWEEP / "decide" / "trace.csv")
    assert list(trace["round"]) == list(range(1, len(trace) + 1)) and trace["stop"].fillna("").iloc[-1]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = find_experiment(client, SWEEP)
    parent = client.search_runs([exp.experiment_id], "tags.role = 'parent'")[0].info.run_id
    trained_after = [r for r in client.search_runs([exp.experiment_id], "tags.run_key != ''")
                     if r.info.run_id not in set(before["run_id"])]
    assert trained_after and {r.data.tags["launcher"] for r in trained_after} == {"packed"}
    logged = {f.path for f in client.list_artifacts(parent, "decide")}
    assert {"decide/trace.csv", "decide/trace.png"} <= logged
    assert any(f.path == "report/report.html" for f in client.list_artifacts(parent, "report"))
    # each run carries the round that proposed it, a column of the study's view
    from study.record import view

    rounds = [r.data.tags.get(view.ROUND_TAG) for r in client.search_runs([exp.experiment_id], "tags.run_key != ''")]
    assert set(rounds) <= {str(n) for n in trace["round"]} and "1" in rounds, rounds
    shown = json.loads(client.get_experiment(exp.experiment_id).tags[view.VIEW_TAG])["selectedColumns"]
    assert f"tags.`{view.ROUND_TAG}`" in shown
    assert f"browse: make ui, then open http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs?" \
           "viewStateShareKey=scaling-study" in out


@pytest.mark.slow
def test_decide_composes_with_the_submitit_launcher(tmp_path):
    """The sweep's narrower widths first (make sweep), then make decide trains the rest of its
    initial design through submitit_local and skips what the sweep trained."""
    env = dict(os.environ, STUDY_HOME=str(tmp_path))
    swept = subprocess.run([sys.executable, "-m", "study.run", "--multirun", "--config-dir", str(SWEEPS),
                            "--config-name", SWEEP, "model.width=0.125,0.25"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
    assert swept.returncode == 0, swept.stderr[-3000:]
    before = _finished(tmp_path)
    done = _decide(tmp_path, "--max-rounds", "1", "hydra/launcher=submitit_local")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = _finished(tmp_path)
    finished = runs[runs["status"] == "FINISHED"]
    assert len(finished) > len(before) and len(finished) == finished["run_key"].nunique()
    assert set(before["run_id"]) <= set(finished["run_id"])  # the sweep's points were not trained again
