"""Per-point tuning with Optuna 5 on the minival split."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import optuna
import pytest
import torch

from study.point import device as devices
from study.point.lifecycle import run_point
from study.record.tracking import NullTracker
from study.settings import config
from study.train import tune
from tests.conftest import ROOT, TINY, compose_cfg

TUNE = ["tune.trials=4", "tune.startup_trials=1", "recipe.epochs=3", "data.synthetic_images=600"]


@pytest.fixture
def tuned(study_home):
    study = devices.resolve(config.validate(compose_cfg("config", [*TINY, *TUNE])), torch.device("cpu"))
    tracker = NullTracker()
    lines = []
    outcome = run_point(study, tracker=tracker, device=torch.device("cpu"), echo=lines.append)
    return study, tracker, outcome, lines


def test_tuning_prunes_and_the_final_run_uses_the_best_trial(tuned, study_home):
    study, tracker, outcome, lines = tuned
    assert outcome["status"] == "FINISHED"
    run = tracker.runs[-1]
    trials = run["children"]
    assert len(trials) == 4 and any(t["status"] == "KILLED" for t in trials), lines  # pruning engaged
    st = optuna.load_study(study_name=tune.study_name(study), storage=tune.storage(study.tune))
    best = st.best_trial
    assert run["tags"]["optuna.best_trial"] == str(best.number) and run["tags"]["tuned"] == "true"
    for k, v in best.params.items():
        assert run["params"][k] == v  # the final run trained with the best trial's settings
    for t in trials:  # the test split is never used in a trial
        assert not {"top1", "top5", "error"} & t["metrics"].keys()
    assert run["metrics"]["top1"] >= 0 and json.loads(run["tags"]["optuna.trials"])["PRUNED"] >= 1
    report = run["artifacts"]["tuning.json"]
    assert report["best_trial"] == best.number and set(report["importances"]) <= set(best.params)
    assert sum(report["trials"].values()) == 4


def test_restarted_study_continues_without_repeating_trials(tuned):
    study, tracker, _, _ = tuned
    more = replace(study, tune=replace(study.tune, trials=6), force=True)
    run_point(more, tracker=tracker, device=torch.device("cpu"), echo=lambda _: None)
    st = optuna.load_study(study_name=tune.study_name(study), storage=tune.storage(study.tune))
    finished = [t for t in st.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished) == 6 and len(tracker.runs[-1]["children"]) == 2  # only the 2 missing trials ran


@pytest.mark.slow
def test_killed_tuning_run_continues_the_same_study(study_home):
    env = dict(os.environ, STUDY_HOME=str(study_home), PYTHONUNBUFFERED="1")
    args = [sys.executable, "-m", "study.run", *TINY, "tune.trials=5", "recipe.epochs=3", "sweep=tuning"]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    seen = ""
    deadline = time.time() + 240
    while "trial 1:" not in seen and time.time() < deadline:  # two trials done, then kill
        seen += proc.stdout.readline()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    study = devices.resolve(config.validate(compose_cfg("config", [*TINY, "tune.trials=5", "recipe.epochs=3"])),
                            torch.device("cpu"))  # as the CLI does: precision auto -> fp32
    st = optuna.load_study(study_name=tune.study_name(study), storage=tune.storage(study.tune))
    before = {t.number: t.params for t in st.trials if t.state.is_finished()}
    assert len(before) >= 2
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    st = optuna.load_study(study_name=tune.study_name(study), storage=tune.storage(study.tune))
    after = {t.number: t.params for t in st.trials if t.state.is_finished()}
    assert all(after[n] == p for n, p in before.items())  # finished trials kept, not repeated
    good = [t for t in st.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(good) == 5
