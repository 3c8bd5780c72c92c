"""Decisions tested the way statisticians test one: simulated studies from planted truths
(analysis/simulate.py: clear winners, ties, a flip, a resolution-dependent winner; 1-3 seeds;
noise like the default study's) through the same path as a real sweep. Intervals must cover,
ties must stay undecided, clear cases must be found; the paper's three regime findings are
reproduced; and a simulated study recorded in MLflow goes through `python -m analysis`."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from analysis import rules, simulate
from analysis.report import summary
from tests.conftest import ROOT


def test_simulation_based_calibration_of_depth_vs_width():
    c = simulate.calibrate(n_studies=300, draws=400, seed=2)
    ties = c["studies"] * 2 / len(simulate.TRUTHS)
    mc_error = 2 * np.sqrt(0.1 * 0.9 / ties)  # two Monte Carlo standard errors of a 10% rate
    assert 0.85 <= c["coverage_regime_gap"] <= 0.95, c
    assert 0.85 <= c["coverage_resolution_gap"] <= 0.95, c
    assert c["tie_named_a_winner"] <= 0.10 + mc_error, c  # 1 - level, by construction
    assert c["clear_right_winner"] >= 0.90, c


def _paper_study(seed: int = 0) -> pd.DataFrame:
    """The paper's three regimes: width wins at 10 epochs, the winner depends on the
    resolution at 100, depth wins at every resolution at 350."""
    rng = np.random.default_rng(seed)
    truths = {10: simulate.TRUTHS["width"], 100: simulate.TRUTHS["resolution"],
              350: simulate.TRUTHS["depth_everywhere"]}
    return simulate.configurations(simulate.study(truths, rng, noise=0.05, seeds=2))


def test_the_papers_three_regime_findings_are_reproduced():
    decisions = rules.decide(_paper_study(), 300, 0)
    dvw = decisions["depth_vs_width"]["by_regime"]
    assert dvw[10]["winner"] == "width"
    assert dvw[100]["winner"] == "depends_on_resolution"
    assert dvw[100]["by_resolution"][16]["winner"] == "width" and dvw[100]["by_resolution"][32]["winner"] == "depth"
    assert dvw[100]["interactions"]["needed"] is True
    assert dvw[350]["winner"] == "depth" and {r["winner"] for r in dvw[350]["by_resolution"].values()} == {"depth"}
    flip = decisions["depth_vs_width"]["flip"]
    assert flip["flips"] is True and flip["from"] == [10, "width"] and flip["to"] == [350, "depth"]
    lines = summary(decisions)
    assert lines[0].startswith("10 epochs: width scaling wins at every resolution")
    assert lines[1].startswith("100 epochs: the winner depends on the resolution: width at 16 px")
    assert lines[2].startswith("350 epochs: depth scaling wins at every resolution")


def test_a_tie_is_reported_undecided_with_what_would_decide_it():
    rng = np.random.default_rng(3)
    configs = simulate.configurations(simulate.runs(simulate.TRUTHS["tie"], 10, rng, noise=0.08, seeds=1))
    decisions = rules.decide(configs, 300, 0)
    d = decisions["depth_vs_width"]["by_regime"][10]
    assert d["winner"] == "undecided" and "would_decide" in d
    line = summary(decisions)[0]
    assert line.startswith("10 epochs: undecided between depth and width") and "wins" not in line
    assert "to decide it:" in line


def test_slow_resolution_scaling_warns_at_the_grid_edge_and_selects_on_minival():
    configs = _paper_study()
    res = rules.resolution_scaling(configs, 200)
    codes = {w["code"] for w in res["warnings"]}
    assert "frontier_at_grid_edge" in codes  # the simulated law keeps rewarding resolution up to 32 px
    assert all(d["selected_on"] == "minival" for d in res["by_regime"].values())
    # Minival that disagrees with test moves the frontier: selection never reads test.
    flipped = configs.assign(**{"minival/top1": 1 - configs["error"].max() + configs["error"] - configs["error"].min()})
    assert rules.frontier(flipped)["flops"].tolist() != rules.frontier(configs)["flops"].tolist()


@pytest.mark.slow
def test_a_simulated_study_recorded_in_mlflow_goes_through_the_analysis_entry_point(tmp_path):
    rng = np.random.default_rng(4)
    table = simulate.study({10: simulate.TRUTHS["width"], 350: simulate.TRUTHS["depth"]}, rng, 0.05, 1)
    simulate.record(table, f"sqlite:///{tmp_path}/mlflow.db", "simulated", str(tmp_path / "artifacts"))
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "analysis", "--sweep", "simulated", "--out", str(out),
                           "--replicates", "300"], cwd=ROOT, env=dict(os.environ, STUDY_HOME=str(tmp_path)),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rules_json = json.loads((out / "rules.json").read_text())
    dvw = rules_json["depth_vs_width"]
    assert dvw["by_regime"]["10"]["winner"] == "width" and dvw["by_regime"]["350"]["winner"] == "depth"
    for regime in dvw["by_regime"].values():  # the pinned format other tools read
        assert {"winner", "p_depth_better", "error_gap_depth_minus_width", "by_resolution"} <= regime.keys()
        for r in regime["by_resolution"].values():
            assert r["winner"] in ("depth", "width", "undecided") and len(r["error_gap_depth_minus_width"]["interval"]) == 2
    assert dvw["flip"]["flips"] is True
    assert "10 epochs: width scaling wins" in done.stdout and "The winner flips" in done.stdout
    assert not (ROOT / "mlruns").exists(), "nothing written into the checkout"


def _with_lack_of_fit(sd: float, seed: int) -> pd.DataFrame:
    """A planted tie measured with 3 seeds of small noise, each configuration moved by its own
    offset (sd `sd` of log error) that no smooth surface follows: lack of fit, not seed noise."""
    rng = np.random.default_rng(seed)
    table = simulate.runs(simulate.TRUTHS["tie"], 10, rng, noise=0.02, seeds=3)
    configuration = table.groupby(["model.depth", "model.width", "data.resolution"]).ngroup().to_numpy()
    offsets = rng.normal(0, sd, configuration.max() + 1)[configuration]
    table["error"] *= np.exp(offsets)
    table["minival/top1"] = 1 - (1 - table["minival/top1"]) * np.exp(offsets)
    return simulate.configurations(table)


def test_a_surface_that_misses_its_configurations_is_not_promised_a_decision_by_more_seeds():
    d = rules.decide(_with_lack_of_fit(0.3, 11), 300, 0)["depth_vs_width"]["by_regime"][10]
    noise = d["noise"]
    assert noise["seed_share"] < 0.2 and noise["lack_of_fit_p"] < 0.01, noise
    assert d["winner"] == "undecided" and d["would_decide"].startswith("more seeds will not decide it: the surface "
                                                                      "misses its configurations"), d["would_decide"]


def test_seed_noise_alone_is_told_from_lack_of_fit():
    rng = np.random.default_rng(12)
    configs = simulate.configurations(simulate.runs(simulate.TRUTHS["tie"], 10, rng, noise=0.15, seeds=2))
    noise = rules.decide(configs, 300, 0)["depth_vs_width"]["by_regime"][10]["noise"]
    assert noise["seed_share"] > 0.5 and noise["lack_of_fit_p"] > 0.01, noise
    one_seed = simulate.configurations(simulate.runs(simulate.TRUTHS["tie"], 10, rng, noise=0.15, seeds=1))
    assert rules.decide(one_seed, 300, 0)["depth_vs_width"]["by_regime"][10]["noise"]["seed_share"] is None
