"""Synthetic sweeps with a planted truth, to test the decisions the way statisticians test
one: many simulated studies, counting how often intervals cover the truth and how often a
winner is named where there is none. Also a power tool: how many seeds would a grid need?

A truth gives each resolution the elasticities of error with respect to depth and width,
e = floor + e0 (d/d0)^-a_d(r) (w/w0)^-a_w(r) (r/r0)^-rho, with training compute proportional to
d w^2 r^2: per unit of log compute, depth buys a_d(r) and width a_w(r)/2. Each seed's error is
the true error times a log-normal noise, of which the share SHARED is the run's training
randomness (common to its test and minival errors) and the rest each split's own evaluation
noise. Tables look like analysis.load.load_runs's, one row
per run, so they go through the same by_configuration -> tidy -> decision path as a real sweep.

The true gap of a simulated study is the decision's statistic on noiseless runs of the same
grid (the value the estimate tends to as noise vanishes), so coverage measures the intervals'
claim, not the surface's fit to a floor it cannot represent exactly.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

DEPTHS, WIDTHS, RESOLUTIONS = (14, 26, 50), (0.25, 0.5, 1.0), (16, 24, 32)


@dataclass(frozen=True)
class Truth:
    name: str
    elasticities: Callable[[float], tuple[float, float]]  # resolution -> (a_depth, a_width)
    expected: str                                         # the right regime winner
    floor: float = 0.0


def _x(r: float) -> float:  # 0 at the smallest resolution, 1 at the largest
    return float(np.log(r / RESOLUTIONS[0]) / np.log(RESOLUTIONS[-1] / RESOLUTIONS[0]))


TRUTHS = {
    "depth": Truth("depth", lambda r: (0.50, 0.10), "depth"),              # per log C: 0.50 vs 0.05
    "width": Truth("width", lambda r: (0.00, 0.80), "width"),              # 0.00 vs 0.40
    "tie": Truth("tie", lambda r: (0.15, 0.30), "undecided"),              # 0.15 vs 0.15: only compute matters
    "tie_floor": Truth("tie_floor", lambda r: (0.2, 0.4), "undecided", floor=0.02),
    "resolution": Truth("resolution", lambda r: (0.05 + 0.45 * _x(r), 0.60 - 0.55 * _x(r)),
                        "depends_on_resolution"),  # width at 16 px, depth at 32 px
    "depth_everywhere": Truth("depth_everywhere", lambda r: (0.45 + 0.1 * _x(r), 0.05 + 0.05 * _x(r)), "depth",
                              floor=0.01),
}


def true_error(truth: Truth, d, w, r, e0: float = 0.3, rho: float = 0.3) -> float:
    a_d, a_w = truth.elasticities(r)
    return truth.floor + e0 * (d / DEPTHS[0]) ** -a_d * (w / WIDTHS[0]) ** -a_w * (r / RESOLUTIONS[0]) ** -rho


SHARED = 0.5  # share of a run's error variance that is training randomness, shared by its splits


def run_row(truth: Truth, d, w, r, epochs: int, seed: int, rng: np.random.Generator, noise: float,
            native: int) -> dict:
    """One run of configuration (d, w, r) under `truth`, with the run record's columns: test and
    minival errors each with log-normal noise of sd `noise`, correlated by SHARED."""
    flops = 1e4 * d * w ** 2 * r ** 2
    err = true_error(truth, d, w, r)
    trained, test, minival = rng.normal(0, noise, size=3)
    own = np.sqrt(1 - SHARED)
    e = min(0.99, err * np.exp(np.sqrt(SHARED) * trained + own * test)) if noise else err
    m = min(0.99, err * np.exp(np.sqrt(SHARED) * trained + own * minival)) if noise else err
    return {"model.depth": d, "model.width": w, "data.resolution": r, "recipe.epochs": epochs,
            "seed": seed, "error": e, "top1": 1 - e, "minival/top1": 1 - m, "flops": flops,
            "params": d * w ** 2 * 1e4, "activations": flops / 10,
            "latency_ms": flops / 1e6 * (1 + 0.3 * np.log(d)), "data.train_images": TRAIN_IMAGES,
            "train_time_s": 3 * flops * TRAIN_IMAGES * epochs / 2e10,  # at 20 GFLOP/s
            "data.native_resolution": native}


TRAIN_IMAGES = 1000


def runs(truth: Truth, epochs: int, rng: np.random.Generator, noise: float = 0.08, seeds: int = 1,
         depths=DEPTHS, widths=WIDTHS, resolutions=RESOLUTIONS) -> pd.DataFrame:
    """One row per run of a grid under `truth`, with the run record's columns. noise=0 gives
    the true errors."""
    return pd.DataFrame([run_row(truth, d, w, r, epochs, s, rng, noise, max(resolutions))
                         for d, w, r in itertools.product(depths, widths, resolutions) for s in range(seeds)])


def configurations(table: pd.DataFrame) -> pd.DataFrame:
    from analysis.load import by_configuration
    from analysis.rules import tidy

    return tidy(by_configuration(table))


def study(truths: dict[int, Truth], rng, noise: float, seeds: int) -> pd.DataFrame:
    """A whole sweep: one truth per epoch regime."""
    return pd.concat([runs(t, e, rng, noise, seeds) for e, t in truths.items()], ignore_index=True)


def calibrate(n_studies: int = 240, draws: int = 400, seed: int = 0) -> dict:
    """Simulated studies of every truth, 1-3 seeds and noise like the default study's (relative
    sd 5-15% of the error): coverage of the 90% interval of each regime's gap and of each
    resolution's, how often a winner is named on ties, how often the right one on clear cases."""
    from analysis.depth_width import depth_vs_width

    rng = np.random.default_rng(seed)
    names = list(TRUTHS)
    covered, covered_res, named_on_tie, right, clear, outcomes = [], [], [], [], [], {n: {} for n in names}
    for i in range(n_studies):
        truth = TRUTHS[names[i % len(names)]]
        noise, seeds = float(rng.choice([0.05, 0.1, 0.15])), int(rng.integers(1, 4))
        noisy = depth_vs_width(configurations(runs(truth, 10, rng, noise, seeds)), draws, seed=i)["by_regime"][10]
        exact = depth_vs_width(configurations(runs(truth, 10, rng, 0.0, 1)), 2, seed=i)["by_regime"][10]
        lo, hi = noisy["error_gap_depth_minus_width"]["interval"]
        covered.append(lo <= exact["error_gap_depth_minus_width"]["estimate"] <= hi)
        for r, d in noisy["by_resolution"].items():
            lo, hi = d["error_gap_depth_minus_width"]["interval"]
            covered_res.append(lo <= exact["by_resolution"][r]["error_gap_depth_minus_width"]["estimate"] <= hi)
        winner = noisy["winner"]
        outcomes[truth.name][winner] = outcomes[truth.name].get(winner, 0) + 1
        if truth.expected == "undecided":
            named_on_tie.append(winner != "undecided")
        elif truth.expected in ("depth", "width"):
            clear.append(winner == truth.expected)
        else:
            right.append(winner == truth.expected)
    return {"studies": n_studies, "coverage_regime_gap": float(np.mean(covered)),
            "coverage_resolution_gap": float(np.mean(covered_res)),
            "tie_named_a_winner": float(np.mean(named_on_tie)), "clear_right_winner": float(np.mean(clear)),
            "resolution_dependent_found": float(np.mean(right)), "outcomes": outcomes}


PARAMS = ("model.depth", "model.width", "data.resolution", "recipe.epochs", "seed", "data.train_images",
          "data.native_resolution")
METRICS = ("error", "top1", "minival/top1", "flops", "params", "activations", "latency_ms", "train_time_s")


def record(table: pd.DataFrame, tracking_uri: str, sweep: str, artifact_root: str) -> None:
    """Write a simulated table into an MLflow store as a sweep's run record (a parent run, one
    child per row; artifacts, such as the report, under `artifact_root`), so it can be analysed
    like a real sweep: `python -m analysis`. A row's `status` (FINISHED when absent or empty)
    and `reason` make it a point that failed or was killed: its params and reason, no metrics."""
    import hashlib

    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    from pathlib import Path

    exp = client.create_experiment(sweep, artifact_location=Path(artifact_root, sweep).as_uri())
    parent = client.create_run(exp, run_name=sweep, tags={"role": "parent", "sweep": sweep}).info.run_id
    for row in table.to_dict("records"):
        key = hashlib.sha256(str([row[p] for p in PARAMS if p != "seed"]).encode()).hexdigest()[:16]
        name = f"w={row['model.width']:g} d={row['model.depth']} r={row['data.resolution']} e={row['recipe.epochs']}"
        run = client.create_run(exp, run_name=name, tags={"mlflow.parentRunId": parent, "sweep": sweep,
                                                          "point_key": key, "run_key": f"{key}-s{row['seed']}"}).info.run_id
        status = row.get("status") or "FINISHED"
        finished = status == "FINISHED"
        client.log_batch(run, metrics=[Metric(m, float(row[m]), 0, 0) for m in METRICS if finished],
                         params=[Param(p, str(row[p])) for p in PARAMS] + [Param("point_key", key)],
                         tags=[RunTag("simulated", "true")]
                         + ([] if finished else [RunTag("status_reason", str(row.get("reason") or status))]))
        client.set_terminated(run, status)
    client.set_terminated(parent, "FINISHED")


# --- adaptive studies (analysis/adaptive.py) against the full grid ------------------------

SHORT, LONG = 10, 40  # the two regimes of a simulated study: epochs


def declared_grid(epochs=(SHORT, LONG), depths=DEPTHS, widths=WIDTHS, resolutions=RESOLUTIONS) -> pd.DataFrame:
    """The declared configurations of a simulated sweep with their training compute."""
    from analysis.fit import training_compute

    rows = [{"epochs": e, "depth": d, "width": w, "resolution": r, "compute": float(
        training_compute(1e4 * d * w ** 2 * r ** 2, TRAIN_IMAGES, e))}
        for e in epochs for d, w, r in itertools.product(depths, widths, resolutions)]
    return pd.DataFrame(rows)


def adaptive_study(truths: dict[int, Truth], rng: np.random.Generator, noise: float, settings,
                   budget: float = 1.0, max_rounds: int = 50) -> dict:
    """One adaptive study in which training a configuration draws its error from the planted
    law with its noise and costs its compute; `budget` in full grids."""
    from analysis import adaptive

    grid = declared_grid(tuple(truths))
    grid_compute = float(grid["compute"].sum())
    table, rounds, predictions, predicted = pd.DataFrame(), [], [], {}
    for _ in range(max_rounds):
        cands = adaptive.candidates(grid, table)
        spent = adaptive.spent_compute(table)
        proposal = adaptive.propose(table, cands, grid_compute, budget * grid_compute - spent, settings)
        predictions += adaptive.settle_outcomes(predicted, proposal.settled)
        predicted = proposal.predicted
        rounds.append({"spent": spent / grid_compute, "trained": len(proposal.batch)})
        if proposal.stop:
            break
        new = [run_row(truths[int(c["epochs"])], c["depth"], c["width"], c["resolution"], int(c["epochs"]),
                       int(c["seed"]), rng, noise, max(RESOLUTIONS)) for _, c in proposal.batch.iterrows()]
        table = pd.concat([table, pd.DataFrame(new)], ignore_index=True)
    # what the study states: the report's decisions on its runs (test split), not the minival
    # decisions it stopped on
    stated = depth_vs_width_of(table, settings.draws, settings.seed) if len(table) else proposal.decisions
    return {"decisions": stated, "stopped_on": proposal.decisions, "compute": spent / grid_compute,
            "rounds": len(rounds), "stop": proposal.stop, "predictions": predictions}


def resolution_winner(truth: Truth, r: float) -> str:
    """The right answer at one resolution: per unit of log compute depth buys a_d, width a_w / 2."""
    a_d, a_w = truth.elasticities(r)
    return "undecided" if abs(a_d - a_w / 2) < 1e-9 else "depth" if a_d > a_w / 2 else "width"


def expected_flip(short: Truth, long: Truth):
    if short.expected in ("depth", "width") and long.expected in ("depth", "width"):
        return short.expected != long.expected
    return None


def adaptive_vs_grid(studies_per_family: int = 100, draws: int = 400, seed: int = 0, settings=None,
                     families=None, processes: int = 1) -> dict:
    """Per truth family (planted in the long regime; the short regime gets another family's,
    so a prior that leaked into the answer would show): how often the adaptive study and the
    full grid (one seed per point) name the right winner (regime, per resolution), name a
    wrong one (on ties: any), get the flip right, and the adaptive study's compute over the
    full grid's. Both see the same truths and noise level; every study has its own random
    streams, so results do not depend on `processes` or on the other studies."""
    from concurrent.futures import ProcessPoolExecutor

    from analysis.adaptive import Settings

    settings = settings or Settings(draws=draws)
    names = list(families or TRUTHS)
    jobs = [(f, i, names, seed, draws, settings) for f in names for i in range(studies_per_family)]
    if processes > 1:
        with ProcessPoolExecutor(processes) as pool:
            studies = list(pool.map(_compare, *zip(*jobs), chunksize=4))
    else:
        studies = [_compare(*job) for job in jobs]
    out = {}
    for f in names:
        mine = pd.DataFrame([x for x in studies if x["family"] == f])
        metrics = [c for c in mine.columns if c.startswith(("grid_", "adaptive_")) or c in ("compute", "rounds")]
        out[f] = {k: float(mine[k].mean()) for k in metrics} | {
            "compute_max": float(mine["compute"].max()), "compute_p90": float(mine["compute"].quantile(0.9)),
            "studies": studies_per_family}
    return out | {"_details": studies}


def _compare(f: str, i: int, names: list[str], seed: int, draws: int, settings) -> dict:
    """One simulated study of family `f`, analysed as a full grid and run as an adaptive study."""
    long = TRUTHS[f]
    short = TRUTHS[names[(names.index(f) + 1 + i % (len(names) - 1)) % len(names)]] if len(names) > 1 else long
    rng = [np.random.default_rng([seed, names.index(f), i, k]) for k in range(3)]
    noise = float(rng[0].choice([0.05, 0.1, 0.15]))
    truths = {SHORT: short, LONG: long}
    grid = depth_vs_width_of(study(truths, rng[1], noise, 1), draws, i)
    adaptive = adaptive_study(truths, rng[2], noise, settings)
    out = {"family": f, "study": i, "noise": noise, "short": short.name,
           "grid": grid["by_regime"].get(LONG, {}).get("winner"),
           "adaptive": adaptive["decisions"]["by_regime"].get(LONG, {}).get("winner"),
           "compute": adaptive["compute"], "rounds": adaptive["rounds"], "stop": adaptive["stop"],
           "predictions": adaptive["predictions"]}
    flip = expected_flip(short, long)
    for name, d in (("grid", grid), ("adaptive", adaptive["decisions"])):
        got = d["by_regime"].get(LONG, {})
        per_res = [(got.get("by_resolution", {}).get(r, {}).get("winner", "undecided"), resolution_winner(long, r))
                   for r in RESOLUTIONS]
        named = [(got.get("winner"), long.expected)] + per_res
        out |= {f"{name}_right": float(got.get("winner", "undecided") == long.expected),
                f"{name}_flip": float(d["flip"].get("flips") == flip),
                f"{name}_res_right": float(np.mean([w == want for w, want in per_res])),
                f"{name}_false": float(np.mean([w in ("depth", "width") and w != want for w, want in named]))}
    return out


def depth_vs_width_of(table: pd.DataFrame, draws: int, seed: int) -> dict:
    from analysis.depth_width import depth_vs_width

    return depth_vs_width(configurations(table), draws, seed)
