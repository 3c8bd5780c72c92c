"""What to run next to decide an undecided question, and what it would cost.

Every undecided line of the report ends with one: more seeds of the configurations the question
stands on, as many as would decide it if today's estimate held (an interval's half width shrinks
as 1/sqrt(seeds)), as a `make sweep` command that trains only the missing runs (finished seeds
are skipped), with its training compute and its wall time on the machine that trained the runs
(their recorded train_time_s, one job at a time); or `make decide` with that time as its budget,
which spends it where it settles most. Where more seeds cannot decide a question, the line says
what would instead: a larger resolution when the frontier stops at the grid's largest, other
data when it stops at the data's native one.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

MARGIN = 1.2  # aim above the estimate: the estimate itself is noisy
HOPELESS = 25  # more than 25x today's seeds: the effect is within noise of zero


def seeds_needed(z: float, bound: float, now: float, seed_share: float | None = None) -> int | None:
    """Seeds per configuration at which a statistic now `z` standard errors from zero would
    reach `bound` ones, if its estimate held; None when it is zero, or when no number would.
    `seed_share`: the part of its variance that seeds explain (depth_width.noise_split; None:
    all of it); the rest, the surface's lack of fit, stays whatever the seeds."""
    if not np.isfinite(z) or z == 0:
        return None
    share = 1.0 if seed_share is None else seed_share
    room = (z / bound) ** 2 - (1 - share)  # the variance, as a share of today's, seeds may keep
    if room <= 0 or share <= 0:
        return None
    return max(int(math.ceil(max(now, 1) * share / room * MARGIN)), int(now) + 1)


def command(configs: pd.DataFrame, epochs: list[int], seeds: int, sweep_file: str) -> str:
    """The `make sweep` command that brings the configurations of `epochs` to `seeds` seeds
    each, with what it costs."""
    runs = configs[configs["epochs"].isin(epochs)]
    extra = (seeds - runs["n_seeds"]).clip(lower=0)
    compute = float((runs["compute"] * extra).sum())
    seconds = float((runs["train_time_s"] * extra).sum()) if "train_time_s" in runs else float("nan")
    args = " ".join([*axes(runs), f"seeds={seeds}"])
    cost = f"{int(extra.sum())} more runs, {compute:.2g} training FLOPs"
    if np.isfinite(seconds):
        minutes = max(1, math.ceil(seconds / 60))
        cost += (f", about {_duration(seconds)} of training on the machine that trained these runs; or "
                 f"make decide SWEEP={sweep_file} BUDGET={minutes}m")
    return f'make sweep SWEEP={sweep_file} ARGS="{args}" ({cost})'


AXES = (("width", "model.width"), ("depth", "model.depth"), ("resolution", "data.resolution"),
        ("epochs", "recipe.epochs"))


def axes(runs: pd.DataFrame) -> list[str]:
    """The grid axes' overrides that name exactly these configurations' values, whatever the
    sweep file declares: the command adds seeds to the study's points and trains no other."""
    return [f"{name}={','.join(f'{v:g}' for v in sorted(runs[col].unique()))}" for col, name in AXES]


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{max(1, round(seconds / 60))} min"


def depth_vs_width(d: dict, configs: pd.DataFrame, epochs: int, sweep_file: str) -> str:
    """An undecided regime: the seeds that would decide it, and the command; or why no number
    of seeds would."""
    z, bound, noise = d["log_gap"]["z"], d["log_gap"]["bound"], d["noise"]
    now = float(configs.loc[configs["epochs"] == epochs, "n_seeds"].mean())
    seeds = seeds_needed(z, bound, now, noise["seed_share"])
    if seeds is None:
        return "no number of seeds: " + ("the estimated gap is zero" if z == 0 else why_not(noise))
    hopeless = (why_not(noise) + "; if the estimate held, ") if seeds > HOPELESS * now else ""
    assumed = " (taking the surface's residual as seed noise: a second seed of some configurations would " \
              "measure it)" if noise["seed_share"] is None else ""
    return (f"{hopeless}about {seeds} seeds per configuration (now {now:g}){assumed}: "
            f"{command(configs, [epochs], seeds, sweep_file)}")


def why_not(noise: dict) -> str:
    """Why more seeds of the same configurations cannot settle a rule."""
    if noise["seed_share"] is not None and noise["seed_share"] < 0.5:
        return (f"the surface misses its configurations by more (residual sd {noise['residual_sd']:.3f} of log "
                f"error) than their seeds vary (sd {noise['seed_sd_of_means']:.3f} of a configuration's mean); "
                "more configurations between the grid's, or a surface that fits, would")
    return ("the gap is within noise of zero; depth and width scale alike here, or larger models (beyond the "
            "grid's depths and widths) would tell them apart")


def resolution_scaling(d: dict, configs: pd.DataFrame, epochs: int, sweep_file: str, target: float) -> str:
    """An undecided resolution rule: more seeds when the interval straddles the target; a
    wider grid when the frontier stops at an edge."""
    a, edge = d["a_resolution"], d.get("resolution_edge")
    if edge and a["estimate"] < target:
        if "native" in edge:
            return f"no more seeds of this grid: {edge}; only data with larger images would decide it"
        grid = sorted(int(r) for r in configs.loc[configs["epochs"] == epochs, "resolution"].unique())
        native = float(configs["native_resolution"].max()) if "native_resolution" in configs else np.inf
        native = native if np.isfinite(native) else np.inf
        wider = ",".join(map(str, grid + [int(min(native, round(grid[-1] * 1.4)))]))
        return (f"no more seeds of this grid: {edge}; a grid with a larger resolution would, e.g. "
                f'make sweep SWEEP={sweep_file} ARGS="recipe.epochs={epochs} data.resolution={wider}"')
    lo, hi = a["interval"]
    half = (hi - lo) / 2
    z = (a["estimate"] - target) / (half / 1.645) if half > 0 else float("inf")
    now = float(configs.loc[configs["epochs"] == epochs, "n_seeds"].mean())
    seeds = seeds_needed(z, 1.645, now)
    if seeds is None:
        return "no number of seeds: the estimate is the target itself"
    return f"about {seeds} seeds per configuration (now {now:g}): {command(configs, [epochs], seeds, sweep_file)}"


def flip(steps: dict[int, tuple[int | None, str]], configs: pd.DataFrame, sweep_file: str) -> str:
    """An undecided flip: decide every undecided regime (the most seeds any of them needs)."""
    needed = {e: s for e, (s, _) in steps.items() if s is not None}
    if not needed:
        return "no number of seeds decides its undecided regimes (see their lines)"
    seeds = max(needed.values())
    return f"decide its undecided regimes, about {seeds} seeds per configuration: " \
           f"{command(configs, sorted(needed), seeds, sweep_file)}"


def steps(decisions: dict, configs: pd.DataFrame, sweep_file: str, target: float) -> dict:
    """`next_steps` of rules.json: the line-ending of every undecided question."""
    dvw = decisions.get("depth_vs_width", {"by_regime": {}, "flip": {}})
    out: dict = {"depth_vs_width": {}, "resolution_scaling": {}}
    seeds = {}
    for e, d in dvw["by_regime"].items():
        if d["winner"] == "undecided":
            out["depth_vs_width"][e] = depth_vs_width(d, configs, e, sweep_file)
            now = float(configs.loc[configs["epochs"] == e, "n_seeds"].mean())
            seeds[e] = (seeds_needed(d["log_gap"]["z"], d["log_gap"]["bound"], now, d["noise"]["seed_share"]), "")
    if dvw["flip"].get("flips") is None and "winners" in dvw["flip"]:
        out["flip"] = flip(seeds, configs, sweep_file)
    for e, d in decisions.get("resolution_scaling", {"by_regime": {}})["by_regime"].items():
        if d["slower_than_efficientnet"] == "undecided":
            out["resolution_scaling"][e] = resolution_scaling(d, configs, e, sweep_file, target)
    return out
