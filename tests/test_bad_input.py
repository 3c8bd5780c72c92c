"""Malformed configs and overrides through the CLI, against a store that already holds a
finished run: each exits non-zero with a message naming the setting, creates no run and
leaves the existing one untouched."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from types import SimpleNamespace

import pytest

from tests.conftest import ROOT, TINY, run_cli

CASES = [
    (["model.width=0"], "model.width=0.0: must be > 0"),                      # out of range
    (["model.depth=42"], "model.depth=42: must be one of"),
    (["data.resolution=4"], "data.resolution=4: must be >= 8"),
    (["recipe.epochs=0"], "recipe.epochs=0: must be >= 1"),
    (["recipe.dropout=1.5"], "recipe.dropout=1.5: must be in [0, 1)"),
    (["recipe.step_milestones=[0.8,0.5]"], "recipe.step_milestones"),
    (["data.name=imagenet"], "data.name='imagenet': must be one of"),         # unknown value
    (["recipe.schedule=linear"], "recipe.schedule='linear': must be one of"),
    (["trainer.precision=fp8"], "trainer.precision='fp8': must be one of"),
    (["model.width=wide"], "model.width"),                                    # wrong types
    (["recipe.batch_size=1.5"], "recipe.batch_size"),
    (["replicate=1.5"], "replicate"),
    (["replicate=-1"], "replicate=-1: must be an integer >= 0"),
    (["model.widht=1"], "model.widht"),                                       # unknown keys
    (["+colour=red"], "colour"),
    (["data=imagenet"], "Could not find 'data/imagenet'"),                    # unknown options
    (["model=resnetrs999"], "Could not find 'model/resnetrs999'"),
    (["data=image_folder", "data.root=/no/such/folder"], "data.root='/no/such/folder': folder does not exist"),
    (["tracking.uri=http://127.0.0.1:9"], "tracking.uri='http://127.0.0.1:9': no tracking server answers"),
    (["tracking.uri=postgresql://lab:s3cret@127.0.0.1:9/mlflow"], "tracking.uri='postgresql://lab:***@"),
]


def _snapshot(home) -> tuple:
    with sqlite3.connect(home / "mlflow.db") as con:
        runs = con.execute("select run_uuid, status, end_time from runs order by run_uuid").fetchall()
        metrics = con.execute("select count(*) from metrics").fetchone()[0]
        params = con.execute("select count(*) from params").fetchone()[0]
    return runs, metrics, params


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    home = tmp_path_factory.mktemp("store")
    done = run_cli(*TINY, "recipe.epochs=1", home=home)
    assert done.returncode == 0, done.stderr[-2000:]
    return home, _snapshot(home)


# One case of each kind in the quick tier (make test-quick); every case in make test.
QUICK = {"model.width=0", "data.name=imagenet", "model.width=wide", "model.widht=1", "data=imagenet",
         "tracking.uri=postgresql://lab:s3cret@127.0.0.1:9/mlflow"}


@pytest.fixture(scope="module")
def outcomes(store, request) -> dict:
    """The CLI's answer to each case this session runs, each a fork of one interpreter that
    imported the study once (tests/cli_fork.py): the same main, exit status and output as a
    process start, without its imports every time."""
    home, _ = store
    wanted = {" ".join(item.callspec.params["args"]) for item in request.session.items
              if item.originalname == "test_bad_input_exits_naming_the_setting_and_leaves_the_store_alone"}
    cases = [a for a, _ in CASES if " ".join(a) in wanted]
    done = subprocess.run([sys.executable, "-m", "tests.cli_fork"], input=json.dumps([[*TINY, *a] for a in cases]),
                          cwd=ROOT, env=dict(os.environ, STUDY_HOME=str(home), PYTHONUNBUFFERED="1"),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.splitlines()[-1])
    return {" ".join(a): SimpleNamespace(**r) for a, r in zip(cases, results)}


@pytest.mark.parametrize("args,needle", [
    pytest.param(a, n, id=" ".join(a), marks=() if " ".join(a) in QUICK else pytest.mark.slow) for a, n in CASES])
def test_bad_input_exits_naming_the_setting_and_leaves_the_store_alone(store, outcomes, args, needle):
    home, before = store
    result = outcomes[" ".join(args)]
    assert result.returncode != 0
    assert needle in result.stderr, result.stderr[-2000:]
    assert "s3cret" not in result.stdout + result.stderr
    assert _snapshot(home) == before


def test_a_sweep_file_that_does_not_parse(store, tmp_path):
    home, before = store
    (tmp_path / "broken.yaml").write_text("defaults:\n  - config\nhydra: {sweeper: {params: {model.width: [0.5\n")
    result = run_cli("--multirun", "--config-dir", str(tmp_path), "--config-name", "broken", *TINY, home=home)
    assert result.returncode != 0
    assert "broken.yaml" in result.stderr or "broken" in result.stderr, result.stderr[-2000:]
    assert _snapshot(home) == before


def test_a_sweep_with_an_unreachable_server_runs_nothing(store):
    home, before = store
    result = run_cli("--multirun", "--config-dir", "sweeps", "--config-name", "smoke",
                     "tracking.uri=http://127.0.0.1:9", home=home)
    assert result.returncode == 2 and "no tracking server answers at 127.0.0.1:9" in result.stderr
    assert _snapshot(home) == before


def test_a_tuning_range_outside_the_settings_allowed_values_is_rejected_at_load(store, tmp_path):
    home, before = store
    (tmp_path / "tune").mkdir()
    (tmp_path / "tune" / "wide.yaml").write_text("defaults: [default]\nspace:\n  recipe.dropout: {low: 0.0, high: 1.5}\n")
    result = run_cli(*TINY, "tune=wide", "tune.trials=2", f"hydra.searchpath=[file://{tmp_path}]", home=home)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "tune.space.recipe.dropout=(0.0, 1.5): the range leaves recipe.dropout's allowed values " \
           "(must be in [0, 1))" in result.stderr
    assert _snapshot(home) == before
