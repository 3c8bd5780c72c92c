"""The embedded default study, for real (issue 41), two opt-in benchmarks:

- `make bench ARGS="--only default-study"` (about 32 minutes on 2 cores): `make sweep` on the
  MNIST sample as replicates 0, 1 and 2 (independent training randomness, one store), each timed
  as a user runs it (target <= 12 min on 2 cores), then what each replicate decides alone and
  whether any two decide a question opposite ways (target: none).
- `make bench ARGS="--only decide-vs-grid --repeats 2"` (about 17 minutes a repeat): `make sweep`
  and `make decide` on the default, alternated, each in a fresh store; their wall times side by
  side (target: decide <= 0.5x the grid) and whether the adaptive study's report reaches every
  decision the grid's report reaches, with the same answer."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from analysis.report import decision_rows
from analysis.stability import UNDECIDED, opposite

ROOT = Path(__file__).resolve().parents[1]
REPLICATES = (0, 1, 2)


def _timed(home: str, *command: str) -> float:
    """Wall seconds of a project command (the venv already built) with STUDY_HOME=home."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", *command], cwd=ROOT, env=dict(os.environ, STUDY_HOME=home),
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _sweep(home: str, replicate: int = 0) -> float:
    """`make sweep` of the default study, one replicate."""
    return _timed(home, "study.run", "--multirun", "--config-dir", "sweeps", "--config-name", "default",
                  f"replicate={replicate}")


def _decide(home: str) -> float:
    """`make decide` of the default study (BUDGET=1x, JOBS=1)."""
    return _timed(home, "study.decide", "--sweep", "default", "--budget", "1x", "--jobs", "1")


def _answers(home: str) -> dict[str, str]:
    """The report's answers (rules.json) of the store in `home`: question -> answer."""
    decisions = json.loads((Path(home) / "reports" / "default" / "rules.json").read_text())
    return {r["question"]: r["answer"] for r in decision_rows(decisions)}


def _clashes(alone: dict[str, dict]) -> list[str]:
    """Questions two replicates decide opposite ways."""
    questions = {q for answers in alone.values() for q in answers}
    return sorted(q for q in questions
                  if any(opposite(a.get(q), b.get(q)) for a in alone.values() for b in alone.values()))


def bench_default_study(args) -> list[tuple]:
    rows = []
    with tempfile.TemporaryDirectory() as home:
        for r in REPLICATES:
            rows.append((f"default study, replicate {r}, min", "make sweep, 54 points", _sweep(home, r) / 60,
                         12.0, None, "<= 12 min"))
        alone = json.loads((Path(home) / "reports" / "default" / "rules.json").read_text())["by_replicate"]
    for r, answers in alone.items():
        decided = [q for q, a in answers.items() if a not in UNDECIDED]
        dvw = [q for q in decided if q.startswith("Depth or width")]
        rows.append((f"  replicate {r} alone decides", "; ".join(f"{q}: {answers[q]}" for q in decided) or "nothing",
                     len(decided), 2, None, ">= 2, >= 1 depth vs width" + ("" if dvw else " (MISSED)")))
    clashes = _clashes(alone)
    rows.append(("questions decided opposite ways", "; ".join(clashes) or "none", len(clashes), 0, None, "0"))
    return rows


def unmatched(mine: dict[str, str], theirs: dict[str, str], who: str) -> list[str]:
    """`mine`'s decisions that `theirs` (named `who`) does not reach with the same answer: the
    grid's that the adaptive study misses, or the adaptive study's beyond the grid's."""
    return [f"{q}: {a} ({who}: {theirs.get(q, 'not asked')})" for q, a in mine.items()
            if a not in UNDECIDED and theirs.get(q) != a]


def bench_decide_vs_grid(args) -> list[tuple]:
    import numpy as np

    walls, missing, extra = {"grid": [], "decide": []}, [], []
    for _ in range(max(args.repeats, 1)):
        with tempfile.TemporaryDirectory() as g, tempfile.TemporaryDirectory() as d:
            walls["grid"].append(_sweep(g))
            walls["decide"].append(_decide(d))
            grid, adaptive = _answers(g), _answers(d)
            missing.append(unmatched(grid, adaptive, "adaptive"))
            extra.append(unmatched(adaptive, grid, "grid"))
    ratios = np.array(walls["decide"]) / np.array(walls["grid"])
    rows = [("make sweep (full grid), min", f"{len(ratios)} runs, alternated", float(np.mean(walls["grid"])) / 60,
             None, None, f"spread {min(walls['grid']) / 60:.1f}-{max(walls['grid']) / 60:.1f}"),
            ("make decide, min", f"{len(ratios)} runs, alternated", float(np.mean(walls["decide"])) / 60,
             float(np.mean(walls["grid"])) / 60, float(ratios.mean()),
             f"<= 0.5 (each pair: {', '.join(f'{r:.2f}' for r in ratios)})")]
    decided = sorted(q for q, a in grid.items() if a not in UNDECIDED)
    rows.append(("grid's decisions", "; ".join(f"{q}: {grid[q]}" for q in decided) or "none", len(decided), None,
                 None, ""))
    for i, (miss, more) in enumerate(zip(missing, extra)):
        rows.append((f"  decide run {i + 1} misses", "; ".join(miss) or "none", len(miss), 0, None, "0"))
        rows.append((f"  decide run {i + 1} decides beyond", "; ".join(more) or "none", len(more), 0, None,
                     "0 (the grid's data do not support it)"))
    return rows
