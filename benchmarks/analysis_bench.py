"""The analysis at scale and its calibration (issue 12):

- speed: 1,000 runs (5 depths x 5 widths x 4 resolutions x 2 regimes x 5 seeds, simulated)
  through by_configuration and every rule with 1,000 replicates; target under 60 s on 2 cores;
- calibration: analysis.simulate.calibrate over simulated studies with planted truths: coverage
  of the 90% intervals of the gap (regime and per resolution; target 0.85-0.95), how often a tie
  is given a winner (target 0.10, the 1 - level a 90% decision allows), how often a clear case
  gets the right one (target >= 0.90)."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd

from analysis import adaptive, rules, simulate

GRID = dict(depths=(14, 26, 50, 101, 152), widths=(0.25, 0.5, 1.0, 1.5, 2.0), resolutions=(16, 24, 32, 48))


def bench_analysis(args) -> list[tuple]:
    rng = np.random.default_rng(0)
    table = pd.concat([simulate.runs(simulate.TRUTHS["width"], 10, rng, 0.1, 5, **GRID),
                       simulate.runs(simulate.TRUTHS["depth"], 100, rng, 0.1, 5, **GRID)], ignore_index=True)
    t0 = time.perf_counter()
    rules.decide(simulate.configurations(table), 1000, 0)
    seconds = time.perf_counter() - t0
    return [("analyse 1,000 runs x 1,000 replicates, s", f"{len(table)} runs, every rule", seconds, 60.0,
             seconds / 60.0, "ratio < 1")]


CALIBRATION_SEEDS, CALIBRATION_STUDIES = (1, 2), 3000


def bench_calibration(args) -> list[tuple]:
    """Simulated studies of every truth under two seeds (one process each), pooled: 2,000 planted
    ties, so the tie rate's Monte Carlo standard error is about 0.007."""
    from concurrent.futures import ProcessPoolExecutor

    t0 = time.perf_counter()
    n = CALIBRATION_STUDIES
    with ProcessPoolExecutor(len(CALIBRATION_SEEDS)) as pool:
        runs = list(pool.map(simulate.calibrate, [n] * len(CALIBRATION_SEEDS), [400] * len(CALIBRATION_SEEDS),
                              CALIBRATION_SEEDS))
    pooled = {k: float(np.mean([c[k] for c in runs])) for k in runs[0] if k not in ("studies", "outcomes")}
    ties = sum(sum(c["outcomes"][t].values()) for c in runs for t in ("tie", "tie_floor"))
    se = float(np.sqrt(pooled["tie_named_a_winner"] * (1 - pooled["tie_named_a_winner"]) / ties))
    case = f"{n * len(runs)} simulated studies (seeds {', '.join(map(str, CALIBRATION_SEEDS))})"
    by_seed = ", ".join(f"{c['tie_named_a_winner']:.3f}" for c in runs)
    return [("90% interval covers the regime gap", case, pooled["coverage_regime_gap"], 0.9, None, "0.85-0.95"),
            ("90% interval covers a resolution's gap", case, pooled["coverage_resolution_gap"], 0.9, None, "0.85-0.95"),
            ("tie given a winner", f"{ties} planted ties, +- {se:.3f} (1 s.e.); by seed {by_seed}",
             pooled["tie_named_a_winner"], 0.1, None, "<= 0.10 (1 - level)"),
            ("clear case, right winner", case, pooled["clear_right_winner"], 0.9, None, ">= 0.90"),
            ("resolution-dependent truth found", case, pooled["resolution_dependent_found"], None, None, ""),
            ("  calibration run, s", case, time.perf_counter() - t0, None, None, "")]


def bench_adaptive(args) -> list[tuple]:
    """The adaptive study (analysis/adaptive.py) against the full grid, side by side on the same
    simulated studies (100 per truth family, its defaults): rate of right winners in the long
    regime and per resolution, rate of named-but-wrong winners (on ties: any winner), and the
    adaptive study's training compute over the full grid's (target <= 0.40)."""
    t0 = time.perf_counter()
    n = getattr(args, "studies", 100)
    import os

    result = simulate.adaptive_vs_grid(n, draws=400, seed=0, processes=os.cpu_count() or 1)
    details = result.pop("_details")
    rows = []
    for family, r in result.items():
        case = f"{family}, {r['studies']} studies"
        rows += [(f"right winner: adaptive / grid", case, r["adaptive_right"], r["grid_right"],
                  _ratio(r["adaptive_right"], r["grid_right"]), ">= 1"),
                 (f"right per resolution", case, r["adaptive_res_right"], r["grid_res_right"],
                  _ratio(r["adaptive_res_right"], r["grid_res_right"]), ">= 1"),
                 (f"wrong winner named", case, r["adaptive_false"], r["grid_false"], None, "adaptive <= grid"),
                 (f"flip right", case, r["adaptive_flip"], r["grid_flip"], _ratio(r["adaptive_flip"], r["grid_flip"]),
                  ">= 1"),
                 (f"compute / full grid's (p90 {r['compute_p90']:.2f})", case, r["compute"], 1.0, r["compute"],
                  "<= 0.40")]
    rows += _overall(result, n) + settle_rows([p for study in details for p in study["predictions"]])
    rows.append(("  adaptive benchmark run, s", f"{6 * n} studies x 2", time.perf_counter() - t0, None, None, ""))
    return rows


def settle_rows(predictions: list[tuple[float, bool]]) -> list[tuple]:
    """The chance a round predicts for settling each open rule against how often it then
    settled, by bins of the prediction (the rounds of every simulated study)."""
    return [(f"settled when predicted {c['bin'][0]:.1f}-{c['bin'][1]:.1f}", f"{c['n']} rule-rounds",
             c["settled"], c["predicted"], None, "settled ~ predicted")
            for c in adaptive.settle_calibration(predictions)]


def _ratio(a: float, b: float):
    return a / b if b else None


def _overall(result: dict, n: int) -> list[tuple]:
    """Every family together: the share of right decisions (regime, per resolution, flip), the
    share of winners named on ties (both tie families), the mean compute."""
    fams = list(result)
    right = {who: float(np.mean([(r[f"{who}_right"] + 3 * r[f"{who}_res_right"] + r[f"{who}_flip"]) / 5
                                 for r in result.values()])) for who in ("adaptive", "grid")}
    ties = [f for f in fams if f.startswith("tie")]
    false = {who: float(np.mean([result[f][f"{who}_false"] for f in ties])) for who in ("adaptive", "grid")}
    compute = float(np.mean([r["compute"] for r in result.values()]))
    case = f"all {len(fams)} families, {n} each"
    return [("right decisions (all kinds)", case, right["adaptive"], right["grid"], right["adaptive"] / right["grid"],
             ">= 1"),
            ("winner named on ties", f"{', '.join(ties)}, {n} each", false["adaptive"], false["grid"], None,
             "adaptive <= grid"),
            ("compute / full grid's", case, compute, 1.0, compute, "<= 0.40")]
