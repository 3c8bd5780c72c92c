"""The files a sweep and its jobs exchange, in the sweep's output folder (hydra.sweep.dir):
the sweep callback writes the grid's size before the first job starts, every job writes the
outcomes of its points into its own sub-folder, and the callback reads them all for the
summary table when the last job has ended. Nothing else passes between them."""
from __future__ import annotations

import json
import time
from pathlib import Path

GRID_FILE = "grid.json"       # {"total": points in the sweep, "weights": each job's compute
                              # (study.sweep.progress), "started": the sweep's start, Unix seconds,
                              # "largest_stored": the largest image side stored (study.data.stream)}
OUTCOMES_FILE = "result.json"  # one per job: the outcome dict of each of its points (seeds)


def write_grid(sweep_dir: Path, total: int, weights: list[float] = (), started: float | None = None,
               largest_stored: int | None = None) -> None:
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    plan = {"total": total, "weights": list(weights), "started": time.time() if started is None else started,
            "largest_stored": largest_stored}
    Path(sweep_dir, GRID_FILE).write_text(json.dumps(plan))


def read_grid(sweep_dir: Path) -> dict:
    """What the callback wrote; {"total": 0} when it wrote nothing (a launcher without it)."""
    path = Path(sweep_dir, GRID_FILE)
    return json.loads(path.read_text()) if path.exists() else {"total": 0}


def grid_total(sweep_dir: Path) -> int:
    """The sweep's number of points; 0 when the callback wrote none."""
    return read_grid(sweep_dir)["total"]


def write_outcomes(job_dir: Path, outcomes: list[dict]) -> None:
    """Atomically: other jobs read it for the sweep's progress while it is written."""
    tmp = Path(job_dir, OUTCOMES_FILE + ".tmp")
    ended = time.time()  # for the sweep's ETA (study.sweep.progress)
    tmp.write_text(json.dumps([outcome | {"ended": ended} for outcome in outcomes]))
    tmp.replace(Path(job_dir, OUTCOMES_FILE))


def outcomes_by_job(sweep_dir: Path) -> dict[int, list[dict]]:
    """Each ended job's outcomes, by job number, in job order."""
    files = sorted((p for p in Path(sweep_dir).glob(f"*/{OUTCOMES_FILE}") if p.parent.name.isdigit()),
                   key=lambda p: int(p.parent.name))
    return {int(path.parent.name): json.loads(path.read_text()) for path in files}


def read_outcomes(sweep_dir: Path) -> list[dict]:
    """Every job's outcomes, in job order."""
    return [outcome for rows in outcomes_by_job(sweep_dir).values() for outcome in rows]
