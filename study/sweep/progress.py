"""The sweep's progress: how much of its compute is done, and when it will end.

Each point's weight is its training compute known before it starts: forward FLOPs of one
image (counted on the meta device: no weights, no compute) x epochs x seeds, x
data.max_train_images where a point caps its images (points of one data set otherwise see
the same images). The ETA models the time between two jobs' ends as c x weight^beta, fitted on
the jobs trained so far (skipped points cost nothing; parallel jobs shorten the gaps), and adds
it up over the points left (see `eta`).

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
from pathlib import Path
from typing import TextIO

import numpy as np

from study.settings.config import StudyConfig
from study.sweep import handoff

BAR_WIDTH = 24
CLEAR = "\r\x1b[K"


def complexity_of(study: StudyConfig) -> dict[str, int]:
    """Parameters, forward FLOPs and activations of one image of a point's model
    (study.measure.costs.configuration_complexity); the 10-class, 3-channel model, as `weight` counts it."""
    from study.measure import costs

    return costs.configuration_complexity(study.model, study.data.resolution)


def weight(study: StudyConfig) -> float:
    """A point's training compute, up to a factor shared by the sweep's points."""
    return float(complexity_of(study)["flops"]) * study.recipe.epochs * study.seeds * (study.data.max_train_images or 1)


@dataclass(frozen=True)
class Snapshot:
    total: int                 # points (jobs) in the sweep
    counts: dict[str, int]     # finished, skipped, failed, busy, unrecorded: points done so far
    done_share: float          # share of the sweep's compute done (skipped points included)
    eta_s: float | None        # seconds to the end, None before anything has trained
    elapsed_s: float           # seconds since the sweep started
    shares: tuple[float, ...]  # each job's share of the sweep's compute

    @property
    def done(self) -> int:
        return sum(self.counts.values())


def snapshot(sweep_dir: Path, now: float | None = None) -> Snapshot | None:
    """The sweep's progress from its hand-off files; None when the sweep wrote no weights."""
    plan = handoff.read_grid(sweep_dir)
    weights = plan.get("weights")
    if not weights:
        return None
    outcomes = handoff.outcomes_by_job(sweep_dir)
    counts: dict[str, int] = {}
    for rows in outcomes.values():
        for row in rows:
            counts[row["status"].lower()] = counts.get(row["status"].lower(), 0) + 1
    total_weight = sum(weights) or 1.0
    done_share = sum(weights[j] for j in outcomes if j < len(weights)) / total_weight
    elapsed = (time.time() if now is None else now) - plan["started"]
    left = [weights[j] for j in range(len(weights)) if j not in outcomes]
    return Snapshot(plan["total"], counts, done_share, eta(weights, outcomes, left, elapsed), elapsed,
                    tuple(w / total_weight for w in weights))


TRAINED = ("FINISHED", "FAILED", "UNRECORDED")


def eta(weights: list[float], outcomes: dict[int, list[dict]], left: list[float], elapsed: float) -> float | None:
    """Seconds to the end. The time between one job's end and the next one's is modelled as
    c x weight^beta, beta in [0, 1], fitted in logs on the trained jobs after the first (whose
    time holds the sweep's start-up): small points cost mostly what every point costs, and a
    CPU runs big ones at more FLOP/s. Replayed on a default study (54 points, 2 cores): beta
    0.64-0.69, the ETA within 25% of the time left from the fourth point on, where a model
    linear in the weight was up to 1.7x too long and plain weights up to 3x. Parallel jobs
    shorten the gaps. Until three such jobs have ended: the time spent so far scaled by the
    weight left over the weight trained."""
    ended = sorted((rows[0].get("ended", 0.0), job, any(r["status"] in TRAINED for r in rows))
                   for job, rows in outcomes.items() if rows)
    gaps = [(weights[job], t - t0) for (t0, _, _), (t, job, trained) in zip(ended, ended[1:])
            if trained and t > t0 and weights[job] > 0]
    if len(gaps) >= 3 and len({w for w, _ in gaps}) > 1:
        log_w, log_g = np.log([w for w, _ in gaps]), np.log([g for _, g in gaps])
        beta = float(np.clip(np.polyfit(log_w, log_g, 1)[0], 0.0, 1.0))
        log_c = float(np.mean(log_g - beta * log_w))
        return float(sum(np.exp(log_c) * w ** beta for w in left))
    trained = sum(weights[job] for _, job, was_trained in ended if was_trained)
    return elapsed * sum(left) / trained if trained else None


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
        before = now.done_share - (now.shares[job] if job < len(now.shares) else 0.0)
        tenths = lambda share: int(share * 10 + 1e-9)  # noqa: E731  (a tenth, not float noise)
        if tenths(now.done_share) > tenths(before) or now.done == now.total:
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
