"""The sweep's progress: how much of its compute is done, and when it will end.

Each point's weight is its training compute known before it starts: forward FLOPs of one
image (counted on the meta device: no weights, no compute) x epochs x seeds, x
data.max_train_images where a point caps its images (points of one data set otherwise see
the same images). The ETA scales the wall time spent so far by the weight still to train
over the weight trained (skipped points cost nothing), so parallel jobs count themselves.

On a terminal the sweep's bar is the console's last line, redrawn in place after every
point and shown in front of the point's own step bar while it trains. Elsewhere (CI, SLURM
logs, a pipe) a plain progress line is printed each time another tenth of the compute is
done, so a log keeps one line per point plus about ten.
"""
from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TextIO

from study import handoff
from study.config import StudyConfig

BAR_WIDTH = 24
CLEAR = "\r\x1b[K"


@lru_cache(maxsize=None)
def forward_flops(depth: int, width: float, resolution: int, se: bool, se_ratio: float, resnet_d: bool,
                  num_classes: int = 10, in_chans: int = 3) -> int:
    """Forward FLOPs of one image, counted on the meta device."""
    import torch

    from study import measure, models

    with torch.device("meta"):
        model = models.build_model(depth, width, num_classes=num_classes, in_chans=in_chans, se=se,
                                   se_ratio=se_ratio, resnet_d=resnet_d)
    return measure.complexity(model, resolution, in_chans)["flops"]


def weight(study: StudyConfig) -> float:
    """A point's training compute, up to a factor shared by the sweep's points."""
    m = study.model
    flops = forward_flops(m.depth, m.width, study.data.resolution, m.se, m.se_ratio, m.resnet_d)
    return float(flops) * study.recipe.epochs * study.seeds * (study.data.max_train_images or 1)


@dataclass(frozen=True)
class Snapshot:
    total: int                 # points (jobs) in the sweep
    counts: dict[str, int]     # finished, skipped, failed, busy, unrecorded: points done so far
    done_share: float          # share of the sweep's compute done (skipped points included)
    eta_s: float | None        # seconds to the end, None before anything has trained
    elapsed_s: float           # seconds since the sweep started

    @property
    def done(self) -> int:
        return sum(self.counts.values())


def snapshot(sweep_dir: Path, now: float | None = None, without: int | None = None) -> Snapshot | None:
    """The sweep's progress from its hand-off files; None when the sweep wrote no weights.
    `without` leaves one job out (the progress just before it ended)."""
    plan = handoff.read_grid(sweep_dir)
    weights = plan.get("weights")
    if not weights:
        return None
    outcomes = {job: rows for job, rows in handoff.outcomes_by_job(sweep_dir).items() if job != without}
    counts: dict[str, int] = {}
    trained = done = 0.0
    for job, rows in outcomes.items():
        w = weights[job] if job < len(weights) else 0.0
        done += w
        statuses = [r["status"] for r in rows]
        for s in statuses:
            counts[s.lower()] = counts.get(s.lower(), 0) + 1
        if any(s in ("FINISHED", "FAILED", "UNRECORDED") for s in statuses):
            trained += w
    total_weight = sum(weights) or 1.0
    elapsed = (now or time.time()) - plan.get("started", time.time())
    eta = elapsed * (total_weight - done) / trained if trained else None
    return Snapshot(plan["total"], counts, done / total_weight, eta, elapsed)


def bar_text(s: Snapshot, sweep: str) -> str:
    filled = round(BAR_WIDTH * s.done_share)
    shown = {k: s.counts.get(k, 0) for k in ("finished", "skipped", "failed")} | s.counts  # the three always
    counts = ", ".join(f"{n} {k}" for k, n in shown.items())
    return (f"sweep {sweep} [{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {s.done}/{s.total} points ({counts}), "
            + (f"done in {duration(s.elapsed_s)}" if s.done >= s.total else
               f"{s.done_share:.0%} of compute, ETA {duration(s.eta_s)}"))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Console:
    """Lines for the user: on a terminal the sweep bar stays the last line."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()

    def line(self, text: str) -> None:
        self.stream.write((CLEAR if self.tty else "") + text + "\n")
        self.stream.flush()

    def point_ended(self, sweep_dir: Path, job: int, sweep: str) -> None:
        """After a job's outcomes are written: redraw the bar, or print a plain line each time
        another tenth of the compute is done."""
        now = snapshot(sweep_dir)
        if now is None:
            return
        if self.tty:
            self.stream.write(CLEAR + bar_text(now, sweep)[:shutil.get_terminal_size().columns - 1])
            self.stream.flush()
            return
        before = snapshot(sweep_dir, without=job)
        if int(now.done_share * 10) > int(before.done_share * 10) or now.done == now.total:
            self.line(bar_text(now, sweep))

    def label(self, sweep_dir: Path, sweep: str) -> str:
        """The short text shown in front of a training point's step bar (terminal only)."""
        s = snapshot(sweep_dir) if self.tty else None
        return f"sweep {s.done}/{s.total} {s.done_share:.0%} ETA {duration(s.eta_s)}" if s else ""

    def end(self) -> None:
        """Clear the bar before the sweep's summary."""
        if self.tty:
            self.stream.write(CLEAR)
            self.stream.flush()
