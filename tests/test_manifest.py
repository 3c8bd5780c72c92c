"""The study's manifest (analysis/manifest.py): only the points of the grid a sweep declared enter
the analysis; the experiment's other runs are listed as outside the study, with why, and fitted
only on request; a store from before manifests is analysed whole, with a warning."""
from __future__ import annotations

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from analysis import report, simulate
from analysis.load import load_runs
from study.record.contract import find_experiment
from study.sweep import manifest

SWEEP = "planted"


def _store(tmp_path, declared: bool) -> str:
    """A simulated study (width wins at 10 epochs, depth at 350) plus the same configurations at
    8 epochs trained by hand, recorded as one sweep; with `declared`, the sweep's manifest names
    the 10- and 350-epoch grid."""
    rng = np.random.default_rng(5)
    study = simulate.study({10: simulate.TRUTHS["width"], 350: simulate.TRUTHS["depth"]}, rng, 0.05, 1)
    by_hand = simulate.runs(simulate.TRUTHS["tie"], 8, rng, 0.05, 1).head(4)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    simulate.record(pd.concat([study, by_hand], ignore_index=True), uri, SWEEP, str(tmp_path / "artifacts"))
    if declared:
        client = MlflowClient(uri)
        exp = find_experiment(client, SWEEP)
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        parent = next(r for r in runs if r.data.tags.get("role") == "parent").info.run_id
        keys = sorted({r.data.tags["point_key"] for r in runs if r.data.params.get("recipe.epochs") in ("10", "350")})
        grid = {"version": 1, "source": "sweep", "sweep": SWEEP, "sweep_file": SWEEP, "points": keys,
                "axes": {"recipe.epochs": ["10", "350"], "model.depth": ["14", "26", "50"],
                         "model.width": ["0.25", "0.5", "1.0"], "data.resolution": ["16", "24", "32"]},
                "fixed": {"data.train_images": str(simulate.TRAIN_IMAGES)}}
        manifest.record(client, parent, grid)
        manifest.record(client, parent, grid)  # the same grid again: recorded once
        assert len(client.list_artifacts(parent, "manifest")) == 1
    return uri


def test_runs_outside_the_manifest_are_listed_with_why_and_left_out_of_every_fit(tmp_path):
    uri = _store(tmp_path, declared=True)
    out = tmp_path / "report"
    decisions = report.build(SWEEP, uri, out, 200, log=False)
    assert decisions["regimes"] == [10, 350] and decisions["configurations"] == 54
    assert len(decisions["outside"]) == 4
    assert {o["why"] for o in decisions["outside"]} == {"other epochs: recipe.epochs=8 (the study's: 10, 350)"}
    lines = report.summary(decisions)
    assert lines[0].startswith("Outside the study: 4 run(s)") and "(4 other epochs)" in lines[0]
    assert "## Outside the study (4)" in (out / "report.md").read_text()
    assert 'id="outside"' in (out / "report.html").read_text() and len(pd.read_csv(out / "outside.csv")) == 4
    assert "| split |" in (out / "report.md").read_text()
    assert decisions["depth_vs_width"]["by_regime"][10]["winner"] == "width"
    both = load_runs(SWEEP, uri, include_outside=True)
    assert sorted(both.table["recipe.epochs"].unique()) == [8, 10, 350] and not both.outside
    assert "included on request" in both.scope


def test_a_store_from_before_manifests_is_analysed_whole_with_a_warning(tmp_path):
    uri = _store(tmp_path, declared=False)
    decisions = report.build(SWEEP, uri, tmp_path / "report", 200, log=False)
    assert decisions["regimes"] == [8, 10, 350] and not decisions["outside"]
    warning = report.summary(decisions)[0]
    assert warning.startswith(f"warning: sweep '{SWEEP}' was recorded before study manifests")
    assert "make sweep" in warning
