"""The embedded default study, for real (issue 41): `make sweep` on the MNIST sample as
replicates 0, 1 and 2 (independent training randomness, one store), each timed as a user runs
it (target <= 12 min on 2 cores), then what each replicate decides alone and whether any two
decide a question opposite ways (target: none). About 32 minutes on 2 cores; opt-in:
`make bench ARGS="--only default-study"`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from analysis.stability import UNDECIDED, opposite

ROOT = Path(__file__).resolve().parents[1]
REPLICATES = (0, 1, 2)


def _sweep(home: str, replicate: int) -> float:
    """Wall seconds of `make sweep` (its command, the venv already built) for one replicate."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "study.run", "--multirun", "--config-dir", "sweeps", "--config-name",
                    "default", f"replicate={replicate}"], cwd=ROOT, env=dict(os.environ, STUDY_HOME=home),
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


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
