"""The analysis and the report survive any pattern of failed points: stores written directly
(no training) with a planted truth per regime (depth wins at 10 epochs, width at 40) and points
FAILED in patterns a real sweep meets. The report is made, fits what finished, names what is
missing (how many and which) on the console and in the report, and marks each decision that
lost data."""
from __future__ import annotations

import numpy as np
import pytest

from analysis import report, simulate
from analysis.__main__ import main as analyze

REASON = "diverged in fp32: training loss became nan by step 25 of the epoch"
TABLE = simulate.study({10: simulate.TRUTHS["depth"], 40: simulate.TRUTHS["width"]}, np.random.default_rng(0), 0.05, 1)
E, R, D, W = (TABLE[c] for c in ("recipe.epochs", "data.resolution", "model.depth", "model.width"))
SMALLEST = (D == 14) & (W == 0.25) & (R == 16)

# pattern -> which runs failed
PATTERNS = {
    "a configuration missing one regime": (E == 40) & (D == 50) & (W == 1.0) & (R == 32),
    "a whole resolution row": (E == 10) & (R == 16),
    "a whole regime": E == 40,
    "one finished point": ~((E == 10) & SMALLEST),
    "none finished": E > 0,
}


def _store(tmp_path, failed):
    table = TABLE.assign(status=np.where(failed, "FAILED", "FINISHED"), reason=np.where(failed, REASON, ""))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    simulate.record(table, uri, "sim", str(tmp_path / "artifacts"))
    return uri


def _name(row) -> str:
    return (f"w={row['model.width']:g} d={int(row['model.depth'])} r={int(row['data.resolution'])} "
            f"e={int(row['recipe.epochs'])}")


@pytest.mark.parametrize("pattern", PATTERNS)
def test_the_report_is_made_and_names_what_is_missing(tmp_path, pattern):
    failed = PATTERNS[pattern]
    uri, out = _store(tmp_path, failed), tmp_path / "report"
    lines = report.after_sweep("sim", uri, out, replicates=200)
    console = "\n".join(lines)
    assert lines[0].startswith(f"report: {out / 'report.html'}")
    n = int(failed.sum())
    assert f"Missing: {n} point run(s) did not finish ({n} diverged in fp32)" in console
    md = (out / "report.md").read_text()
    assert f"## Missing points ({n})" in md and "Missing points" in (out / "report.html").read_text()
    for _, row in TABLE[failed].iterrows():  # each one named, with its reason
        assert f"| {_name(row)} |" in md
    assert md.count(REASON) == n
    for e in (10, 40):
        lost = int((failed & (E == e)).sum())
        rows = [line for line in md.splitlines() if line.startswith(f"| Depth or width scaling, {e} epochs |")]
        assert len(rows) == 1
        if lost == (E == e).sum():
            assert "| no decision |" in rows[0] and f"all {lost} point run(s) of this regime did not finish" in rows[0]
        elif lost:
            assert f"lost data: {lost} point run(s) did not finish" in rows[0]
        else:
            assert rows[0].endswith("| complete | test |")


def test_what_finished_is_fitted_as_if_the_rest_had_never_been(tmp_path):
    """A regime that lost nothing keeps its decision, and the one with a hole still finds its winner."""
    lines = report.after_sweep("sim", _store(tmp_path, PATTERNS["a configuration missing one regime"]),
                               tmp_path / "report", replicates=200)
    assert any(line.startswith("10 epochs: depth scaling wins") and "lost data" not in line for line in lines)
    assert any(line.startswith("40 epochs: width scaling wins") and line.endswith(
        "[lost data: 1 point run(s) did not finish]") for line in lines)
    assert any(line.startswith("The winner flips") and "lost data" in line for line in lines)


def test_make_analyze_reports_a_sweep_where_nothing_finished(tmp_path, capsys):
    uri = _store(tmp_path, PATTERNS["none finished"])
    assert analyze(["--sweep", "sim", "--tracking-uri", uri, "--out", str(tmp_path / "r"), "--replicates", "50"]) == 0
    printed = capsys.readouterr().out
    assert "Missing: 54 point run(s) did not finish" in printed
    assert "10 epochs: no depth-vs-width decision: all 27 point run(s) of this regime did not finish." in printed
    assert (tmp_path / "r" / "missing.csv").read_text().count(REASON) == 54
