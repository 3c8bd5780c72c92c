"""Recommend the depth, width and resolution with the lowest expected error within a
latency or FLOPs budget, for an epoch budget, from a sweep's configurations. The choice
is made on minival accuracy (the paper's protocol: the test split only reports); the
expected error given is the chosen configuration's test error."""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import caveats, rules
from analysis.fit import fit_best
from analysis.load import by_configuration, load_runs

Z90 = 1.645  # two-sided 90% normal interval


def recommend(sweep: str, tracking_uri: str, epochs: int, *, latency_ms: float | None = None,
              flops: float | None = None, measured_on: str | None = None) -> dict:
    runs = load_runs(sweep, tracking_uri, measured_on)
    choice = recommend_from(rules.tidy(by_configuration(runs.table)), epochs, latency_ms=latency_ms, flops=flops)
    return {**choice, "latency": runs.latency} if latency_ms is not None else choice


def recommend_from(configs: pd.DataFrame, epochs: int, *, latency_ms: float | None = None,
                   flops: float | None = None) -> dict:
    cost, budget = ("latency_ms", latency_ms) if latency_ms is not None else ("flops", flops)
    regimes = sorted(int(e) for e in configs["epochs"].unique())
    nearest = min(regimes, key=lambda e: abs(np.log(e / epochs)))
    warnings = caveats.regime_mismatch(epochs, regimes)
    regime = configs[configs["epochs"] == nearest]
    lo, hi = float(regime[cost].min()), float(regime[cost].max())
    within = regime[regime[cost] <= budget]
    if within.empty:
        raise LookupError(f"no configuration of the {nearest}-epoch regime fits {cost} <= {budget:g}; "
                          f"the cheapest observed needs {lo:g}")
    if budget > hi:
        warnings.append({"code": "beyond_range", "message": f"{cost} budget {budget:g} exceeds the largest observed "
                         f"({hi:g}): larger models than any run may do better; this extrapolates the sweep."})
    has_minival = "minival/top1" in within and within["minival/top1"].notna().all()
    selected_on = "minival/top1" if has_minival else "error"
    best = within.loc[within[selected_on].idxmax() if selected_on == "minival/top1" else within["error"].idxmin()]
    low, high, method = _interval(best, regime)
    return {"epochs_requested": epochs, "regime_used": nearest, "budget": {cost: budget},
            "depth": int(best["depth"]), "width": float(best["width"]), "resolution": int(best["resolution"]),
            "expected_error": float(best["error"]), "interval_90": [low, high], "interval_method": method,
            cost: float(best[cost]), "candidates_within_budget": int(len(within)), "selected_on": selected_on,
            "warnings": warnings}


def _interval(best: pd.Series, regime: pd.DataFrame) -> tuple[float, float, str]:
    """Seed noise where seeds were run, else the spread of configurations around the
    regime's error-vs-compute law."""
    pooled = best.get("pooled_var", np.nan)
    if best.get("n_seeds", 1) >= 2 and np.isfinite(pooled):
        half = Z90 * np.sqrt(pooled / best["n_seeds"])
        return float(best["error"] - half), float(best["error"] + half), "pooled seed variance"
    law, _ = fit_best(regime["compute"], regime["error"])
    sd = float(np.std(np.log(regime["error"] / law.predict(regime["compute"])), ddof=1))
    return (float(best["error"] * np.exp(-Z90 * sd)), float(best["error"] * np.exp(Z90 * sd)),
            "spread around the regime's error-vs-compute law (one seed per configuration)")
