"""The embedded default study, for real (issues 41 and 44), three opt-in benchmarks:

- `make bench ARGS="--only default-study"` (about 32 minutes on 2 cores): `make sweep` on the
  MNIST sample as replicates 0, 1 and 2 (independent training randomness, one store), each timed
  as a user runs it (target <= 12 min on 2 cores), then what each replicate decides alone and
  whether any two decide a question opposite ways (target: none).
- `make bench ARGS="--only decide-vs-grid --repeats 2"` (about 17 minutes a repeat): `make sweep`
  and `make decide` on the default, alternated, each in a fresh store; their wall times side by
  side (target: decide <= 0.5x the grid) and whether the adaptive study's report reaches every
  decision the grid's report reaches, with the same answer.
- `make bench ARGS="--only pack --repeats 2"` (about 11 minutes a repeat): `make sweep` of the
  default one point at a time against JOBS=auto (hydra/launcher=packed: small points side by side,
  a core each), alternated (which goes first swaps every repeat), each in a fresh store; points
  per hour side by side (target >= 1.3x on 2 cores) and whether the two reports decide the same."""
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


def _sweep(home: str, replicate: int = 0, *launch: str) -> float:
    """`make sweep` of the default study, one replicate (with `launch`: JOBS=auto's launcher)."""
    return _timed(home, "study.run", "--multirun", "--config-dir", "sweeps", "--config-name", "default",
                  f"replicate={replicate}", *launch)


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


def bench_pack(args) -> list[tuple]:
    import numpy as np

    from study.settings import grid
    from study.sweep.compose import compose_sweep

    points = len(grid.expand(dict(compose_sweep("default", []).hydra.sweeper.params), []))
    ways = {"one at a time": (), "packed": ("hydra/launcher=packed",)}
    walls, answers = {w: [] for w in ways}, {w: [] for w in ways}
    for i in range(max(args.repeats, 1)):
        for way in (list(ways) if i % 2 == 0 else list(ways)[::-1]):
            with tempfile.TemporaryDirectory() as home:
                walls[way].append(_sweep(home, 0, *ways[way]))
                answers[way].append(_answers(home))
    gains = np.array(walls["one at a time"]) / np.array(walls["packed"])
    per_hour = {w: [points * 3600 / t for t in walls[w]] for w in ways}
    rows = [(f"{w}, points/h", f"{len(gains)} runs, alternated", float(np.median(per_hour[w])), None, None,
             f"spread {min(per_hour[w]):.0f}-{max(per_hour[w]):.0f} ({points} points, "
             f"{min(walls[w]) / 60:.1f}-{max(walls[w]) / 60:.1f} min)") for w in ways]
    rows.append(("JOBS=auto over one at a time", "points per hour", float(np.median(per_hour["packed"])),
                 float(np.median(per_hour["one at a time"])), float(np.median(gains)),
                 f">= 1.3 (each pair: {', '.join(f'{g:.2f}' for g in gains)})"))
    for i, (one, packed) in enumerate(zip(answers["one at a time"], answers["packed"])):
        differ = unmatched(one, packed, "packed") + unmatched(packed, one, "one at a time")
        decided = sorted(f"{q}: {a}" for q, a in one.items() if a not in UNDECIDED)
        rows.append((f"  repeat {i + 1}: decisions that differ", "; ".join(differ) or "none", len(differ), 0, None,
                     f"one at a time decides: {'; '.join(decided) or 'nothing'}"))
    return rows
