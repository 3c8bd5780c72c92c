"""The files a sweep and its jobs exchange, in the sweep's output folder (hydra.sweep.dir):
the sweep callback writes the grid's size before the first job starts, every job writes the
outcomes of its points into its own sub-folder, and the callback reads them all for the
summary table when the last job has ended. Nothing else passes between them."""
from __future__ import annotations

import json
from pathlib import Path

GRID_FILE = "grid.json"       # {"total": number of points in the sweep}
OUTCOMES_FILE = "result.json"  # one per job: the outcome dict of each of its points (seeds)


def write_grid(sweep_dir: Path, total: int) -> None:
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    Path(sweep_dir, GRID_FILE).write_text(json.dumps({"total": total}))


def grid_total(sweep_dir: Path) -> int:
    """The sweep's number of points; 0 when the callback wrote none (a launcher without it)."""
    path = Path(sweep_dir, GRID_FILE)
    return json.loads(path.read_text())["total"] if path.exists() else 0


def write_outcomes(job_dir: Path, outcomes: list[dict]) -> None:
    Path(job_dir, OUTCOMES_FILE).write_text(json.dumps(outcomes))


def read_outcomes(sweep_dir: Path) -> list[dict]:
    """Every job's outcomes, in job order."""
    files = sorted(Path(sweep_dir).glob(f"*/{OUTCOMES_FILE}"), key=lambda p: int(p.parent.name))
    return [outcome for path in files for outcome in json.loads(path.read_text())]
