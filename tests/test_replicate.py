"""`replicate=K`: the whole study again with independent training randomness, as other points in
the same store; the report pools the replicates and says, per decision, whether each replicate
alone agrees (analysis.stability), naming any replicate that decides the opposite."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from analysis import report, simulate, stability
from study.settings import grid
from study.settings.config import ConfigError, StudyConfig, training_seed, validate


def test_a_replicate_is_another_point_with_its_own_training_randomness_and_the_same_split():
    base = StudyConfig()
    again = [replace(base, replicate=k) for k in (1, 2)]
    keys = {grid.point_key(c) for c in (base, *again)}
    assert len(keys) == 3  # each replicate's points are other points ...
    assert grid.point_key(replace(base, replicate=0)) == grid.point_key(base)  # ... and 0 is the study as it was
    seeds = [training_seed(c) for c in (base, *again, replace(again[0], seed=1))]
    assert seeds[0] == base.seed and len(set(seeds)) == 4  # independent of each other and of the seed
    assert all(c.data.split_seed == base.data.split_seed for c in again)
    assert grid.display_name(again[1]).endswith("rep=2")


def test_a_negative_replicate_is_refused_naming_the_setting():
    # a non-integer is refused where Hydra composes the config (tests/test_bad_input.py)
    with pytest.raises(ConfigError, match="replicate=-1: must be an integer >= 0"):
        validate(replace(StudyConfig(), replicate=-1))


def _replicated(truths: dict, reps: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.concat([simulate.study(truths, rng, noise=0.08, seeds=1).assign(replicate=k) for k in range(reps)],
                     ignore_index=True)


def _decisions(table: pd.DataFrame, bootstrap: int = 200) -> dict:
    from analysis import rules
    from analysis.load import by_configuration

    decisions = rules.decide(rules.tidy(by_configuration(table)), bootstrap, 0)
    decisions.pop("_fits")
    return decisions | report.replication(table, bootstrap, 0)


def test_the_report_of_several_replicates_pools_them_and_has_a_stability_column():
    table = _replicated({10: simulate.TRUTHS["width"], 40: simulate.TRUTHS["depth"]}, 3, seed=4)
    decisions = _decisions(table)
    assert sorted(decisions["by_replicate"]) == [0, 1, 2]
    rows = {r["question"]: r for r in report.decision_rows(decisions)}
    assert rows["Depth or width scaling, 40 epochs"]["answer"] == "depth"
    assert rows["Depth or width scaling, 40 epochs"]["replicates"] == "each agrees (3 of 3)"
    assert rows["Depth or width scaling, 10 epochs"]["replicates"] == "each agrees (3 of 3)"
    assert "each replicate alone" in report._decisions_markdown(decisions)
    line = [x for x in report.summary(decisions) if x.startswith("Replicates 0, 1, 2, pooled")]
    assert line and "OPPOSITE" not in line[0] and "no two replicates decide a question opposite ways" in line[0]
    one = _decisions(table[table["replicate"] == 0])  # one replicate: no column, no line
    assert "by_replicate" not in one and "replicates" not in report.decision_rows(one)[0]


def test_replicates_of_a_planted_truth_never_decide_a_question_two_opposite_ways():
    families = ["depth", "tie", "width", "tie_floor", "resolution"]
    for i, name in enumerate(families[:-1]):  # every question: depth vs width per regime and resolution,
        short = simulate.TRUTHS[families[i + 1]]  # the flip, resolution scaling
        decisions = _decisions(_replicated({10: short, 40: simulate.TRUTHS[name]}, 3, seed=10 + i), bootstrap=100)
        clashes = [r for r in report.decision_rows(decisions) if r["replicates"].startswith("OPPOSITE")]
        assert not clashes, (name, clashes)


def test_a_replicate_that_decides_the_opposite_is_named():
    assert stability.stability("depth", "decided", {0: "depth", 1: "depth", 2: "width"}) == \
        "OPPOSITE: replicate 2 alone says width"
    assert stability.stability("undecided", "undecided", {0: "depth", 1: "width"}).startswith("OPPOSITE")
    assert stability.stability("depth", "decided", {0: "depth", 1: "undecided"}) == \
        "1 of 2 agree; replicate 1 alone: undecided"
    assert stability.stability("undecided", "undecided", {0: None, 1: "undecided"}) == "undecided in each (2)"


def test_rules_json_read_back_gives_the_reports_own_decision_table():
    """What the benchmarks and other tools read (rules.json: its keys turned to strings) answers
    every question as the report did; a decided regime is never also listed as 'no decision'."""
    import json

    table = _replicated({10: simulate.TRUTHS["width"], 40: simulate.TRUTHS["depth"]}, 1, seed=4)
    decisions = _decisions(table)
    read_back = json.loads(json.dumps(report._clean(decisions)))
    rows = [(r["question"], r["answer"]) for r in report.decision_rows(decisions)]
    assert [(r["question"], r["answer"]) for r in report.decision_rows(read_back)] == rows
    assert len({q for q, _ in rows}) == len(rows) and "no decision" not in {a for _, a in rows}
