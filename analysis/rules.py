"""The scaling rules, each answered with an estimate, an interval, a three-valued decision
where it decides something, and warnings.

Input: one row per configuration (analysis.load.by_configuration). Depth vs width lives in
analysis/depth_width.py; every selection (the Pareto frontier) reads minival, never test.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy.stats import ConstantInputWarning, spearmanr

from analysis import caveats as warn
from analysis.fit import fit_best, fit_form, training_compute
from analysis.depth_width import depth_vs_width
from analysis.uncertainty import bootstrap, interval, probability

EFFICIENTNET_RESOLUTION_EXPONENT = 0.214  # 1.15^phi per 2^phi FLOPs (Tan & Le 2019)
COLUMNS = {"model.width": "width", "model.depth": "depth", "data.resolution": "resolution",
           "recipe.epochs": "epochs", "data.train_images": "train_images",
           "data.native_resolution": "native_resolution"}


def tidy(configs: pd.DataFrame) -> pd.DataFrame:
    out = configs.rename(columns=COLUMNS).copy()
    out["compute"] = training_compute(out["flops"], out["train_images"], out["epochs"])
    return out


# --- slow resolution scaling -------------------------------------------------------------

def selection_error(regime: pd.DataFrame) -> pd.Series:
    """The error every selection reads: minival's (1 - minival/top1); test error only where a
    record has no minival (then a `selected_on_test` warning says so)."""
    if "minival/top1" in regime and regime["minival/top1"].notna().all():
        return 1 - regime["minival/top1"]
    return regime["error"]


def frontier(regime: pd.DataFrame, cost: str = "flops", select: pd.Series | None = None) -> pd.DataFrame:
    """Pareto-optimal configurations, chosen on minival: lower selection error than every
    cheaper one."""
    chosen = selection_error(regime) if select is None else select
    ordered = regime.assign(_select=chosen).sort_values([cost, "_select"])
    keep = ordered["_select"] < ordered["_select"].cummin().shift(fill_value=np.inf)
    return ordered[keep].drop(columns="_select")


def frontier_exponents(regime: pd.DataFrame, select: pd.Series | None = None) -> dict[str, float]:
    front = frontier(regime, select=select)
    if front["flops"].nunique() < 3:
        raise ValueError("the frontier has fewer than 3 configurations")
    lc = np.log(front["flops"])
    slope = lambda col: float(np.polyfit(lc, np.log(front[col]), 1)[0])  # noqa: E731
    return {f"a_{k}": slope(k) for k in ("depth", "width", "resolution")}


def selection_noise_sd(regime: pd.DataFrame) -> np.ndarray:
    """Per configuration, the sd of its log selection error: the pooled seed variance of log
    error over its seeds, else (one seed) the residual variance of the regime's error surface."""
    from analysis.depth_width import Surface

    pooled = regime["pooled_var"].iloc[0] if "pooled_var" in regime else np.nan
    mean_error = float(regime["error"].mean())
    if np.isfinite(pooled) and pooled > 0:
        var = pooled / mean_error ** 2  # delta method: var(log e) ~ var(e) / e^2
    else:
        try:
            var = Surface(regime).sigma2 * regime["n_seeds"].mean()
        except ValueError:
            var = 0.1 ** 2  # nothing to estimate it from: a deliberately wide 10%
    return np.sqrt(var / regime["n_seeds"].to_numpy(float))


def resolution_edge(front: pd.DataFrame, regime: pd.DataFrame) -> str | None:
    """Why the frontier's resolution could not grow further, if it could not: it reaches the
    grid's largest resolution, or the data's native one."""
    if "native_resolution" in front and (front["resolution"] >= front["native_resolution"]).any():
        return f"the frontier reaches the data's native {int(front['native_resolution'].max())} px"
    if front["resolution"].iloc[-1] >= regime["resolution"].max():
        return f"the frontier reaches the grid's largest resolution ({int(regime['resolution'].max())} px)"
    return None


def resolution_scaling(configs: pd.DataFrame, n_boot: int, seed: int = 0) -> dict:
    """Exponents of depth, width and resolution against FLOPs along the minival frontier. The
    frontier's membership is itself uncertain: each replicate redraws every configuration's
    selection error with its noise (selection_noise_sd) and selects the frontier again."""
    out, warnings = {}, []
    rng = np.random.default_rng(seed)
    for epochs, regime in configs.groupby("epochs"):
        context = f"slow resolution scaling at {int(epochs)} epochs"
        regime = regime.reset_index(drop=True)
        try:
            est = frontier_exponents(regime)
        except ValueError as e:
            warnings.append(warn.too_few(context, str(e)))
            continue
        sd, chosen = selection_noise_sd(regime), selection_error(regime)
        boot = []
        for _ in range(n_boot):
            try:
                boot.append(frontier_exponents(regime, chosen * np.exp(rng.normal(0, sd))))
            except (ValueError, np.linalg.LinAlgError):
                continue
        boot = pd.DataFrame(boot)
        a_r = boot.get("a_resolution", pd.Series(dtype=float))
        lo, hi = interval(a_r)
        slower = "slower" if hi < EFFICIENTNET_RESOLUTION_EXPONENT else "not_slower" \
            if lo > EFFICIENTNET_RESOLUTION_EXPONENT else "undecided"
        front = frontier(regime)
        edge = resolution_edge(front, regime)
        if slower == "slower" and edge:  # a bound, not a finding: resolution could not grow further
            slower = "undecided"
        out[int(epochs)] = {
            **{k: {"estimate": est[k], "interval": interval(boot.get(k, []))}
               for k in ("a_depth", "a_width", "a_resolution")},
            "slower_than_efficientnet": slower,
            "p_slower_than_efficientnet": probability(a_r < EFFICIENTNET_RESOLUTION_EXPONENT),
            "p_resolution_below_depth": probability(a_r < boot.get("a_depth", np.nan)),
            "p_resolution_below_width": probability(a_r < boot.get("a_width", np.nan)),
            "flops_exponent_sum": est["a_depth"] + 2 * est["a_width"] + 2 * est["a_resolution"],
            "frontier_size": int(len(front)), "selected_on": "minival" if "minival/top1" in regime else "test",
            "resolution_edge": edge,
        }
        warnings += warn.frontier_edges(context, front, regime) + \
            warn.exponent_sum(context, out[int(epochs)]["flops_exponent_sum"])
        if out[int(epochs)]["selected_on"] == "test":
            warnings.append(warn.selected_on_test(context))
    return {"reference_a_resolution": EFFICIENTNET_RESOLUTION_EXPONENT, "by_regime": out, "warnings": warnings}


# --- FLOPs vs latency --------------------------------------------------------------------

PREDICTORS = ("flops", "params", "activations", "latency_ms")


def rank_correlations(part: pd.DataFrame) -> dict[str, float]:
    if len(part) < 3:
        raise ValueError("fewer than 3 configurations")
    with warnings.catch_warnings():  # a constant column (one latency for all) has no rank correlation: NaN
        warnings.simplefilter("ignore", ConstantInputWarning)
        return {p: float(spearmanr(part[p], part["error"]).statistic) for p in PREDICTORS}


def flops_vs_latency(configs: pd.DataFrame, n_boot: int, seed: int = 0, noise_sd: float = 0.01) -> dict:
    out, warnings = {}, []
    for epochs, regime in configs.groupby("epochs"):
        median = regime["flops"].median()
        for size, part in (("small", regime[regime["flops"] <= median]), ("large", regime[regime["flops"] > median])):
            try:
                est = rank_correlations(part)
            except ValueError as e:
                warnings.append(warn.too_few(f"rank correlations, {size} models at {epochs} epochs", str(e)))
                continue
            boot = bootstrap(part, rank_correlations, n_boot, seed, strata=None)
            out[f"{int(epochs)}/{size}"] = {p: {"spearman": est[p], "interval": interval(boot.get(p, []))}
                                            for p in PREDICTORS}
        out[f"{int(epochs)}/pairs"] = equal_flops_pairs(regime, noise_sd)
    return {"by_regime_and_size": out, "warnings": warnings}


def equal_flops_pairs(regime: pd.DataFrame, noise_sd: float, tol: float = 0.1) -> list[dict]:
    """Pairs within `tol` relative FLOPs whose error differs by > 2 sd of a difference, or
    whose latency differs by more than 25%."""
    rows, pairs = regime.reset_index(drop=True), []
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            a, b = rows.loc[i], rows.loc[j]
            if abs(np.log(a["flops"] / b["flops"])) > np.log1p(tol):
                continue
            d_err, r_lat = b["error"] - a["error"], b["latency_ms"] / a["latency_ms"]
            if abs(d_err) > 2 * np.sqrt(2) * noise_sd or not 0.8 <= r_lat <= 1.25:
                pairs.append({"a": _name(a), "b": _name(b), "flops_ratio": float(b["flops"] / a["flops"]),
                              "error_difference": float(d_err), "latency_ratio": float(r_lat)})
    return pairs


def _name(row) -> str:
    return f"w={row['width']:g} d={int(row['depth'])} r={int(row['resolution'])}"


# --- extrapolation -----------------------------------------------------------------------

def extrapolation(configs: pd.DataFrame, n_boot: int, seed: int = 0, held_out: float = 1 / 3) -> dict:
    """Per regime: fit on the smaller 2/3 of configurations by compute, predict the rest. The
    held-out configurations are single noisy runs, so they are compared with a prediction
    interval: the refitted law's spread (bootstrap over the fitted configurations) plus the
    residual scatter of a configuration around the law (log scale, n - k degrees of freedom)."""
    out, warnings, parity = {}, [], []
    for epochs, regime in configs.groupby("epochs"):
        ordered = regime.sort_values("compute")
        k = max(2, int(round(len(ordered) * held_out)))
        train, test = ordered.iloc[:-k], ordered.iloc[-k:]
        try:
            best, _ = fit_best(train["compute"], train["error"])
        except ValueError as e:
            warnings.append(warn.too_few(f"extrapolation at {epochs} epochs", str(e)))
            continue
        boot = bootstrap(train, lambda t: dict(enumerate(fit_form(t["compute"], t["error"], best.form,
                                                                  starts=[best.params]).predict(test["compute"]))),
                         n_boot, seed, strata=None)
        pred = best.predict(test["compute"])
        resid = np.log(best.predict(train["compute"]) / train["error"].to_numpy())
        scatter = np.sqrt(np.sum(resid ** 2) / max(len(train) - len(best.params), 1))
        rng = np.random.default_rng(seed)
        draws = boot.to_numpy() * np.exp(scatter * rng.standard_t(max(len(train) - len(best.params), 1),
                                                                  size=boot.shape))
        lo, hi = (np.nanquantile(draws, q, axis=0) for q in (0.05, 0.95))
        log_ratio = np.log(pred / test["error"].to_numpy())
        out[int(epochs)] = {"form": best.form, "fit_configurations": len(train), "held_out": len(test),
                            "mean_abs_log_error": float(np.mean(np.abs(log_ratio))),
                            "bias_log": float(np.mean(log_ratio)),
                            "prediction_interval_coverage": float(np.mean((test["error"] >= lo)
                                                                          & (test["error"] <= hi)))}
        parity += [{"epochs": int(epochs), "actual": float(a), "predicted": float(p)}
                   for a, p in zip(test["error"], pred)]
        warnings += [warn.fit_failed(f"extrapolation at {epochs} epochs", d) for d in best.diagnostics]
    return {"by_regime": out, "parity": parity, "warnings": warnings}


# --- per-axis fits -----------------------------------------------------------------------

AXES = ("depth", "width", "resolution")


def axis_line(regime: pd.DataFrame, axis: str) -> pd.DataFrame:
    """Configurations that differ from the regime's base model (smallest of every axis) only
    along `axis`."""
    others = [a for a in AXES if a != axis]
    mask = np.logical_and.reduce([regime[a] == regime[a].min() for a in others])
    return regime[mask].sort_values(axis)


def scaling_fits(configs: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """Per regime and axis, error against training compute and against latency: every form
    the points support; one row per fit, best form flagged."""
    rows, warnings = [], []
    for epochs, regime in configs.groupby("epochs"):
        for axis in AXES:
            line = axis_line(regime, axis)
            for cost in ("compute", "latency_ms"):
                context = f"{axis} scaling vs {cost} at {epochs} epochs"
                if len(line) < warn.MIN_CONFIGS:
                    warnings.append(warn.too_few(context, f"{len(line)} configurations on the line"))
                try:
                    best, fits = fit_best(line[cost], line["error"])
                except ValueError as e:
                    warnings.append(warn.too_few(context, str(e)))
                    continue
                warnings += [warn.fit_failed(context, d) for d in best.diagnostics]
                rows += [{"epochs": int(epochs), "axis": axis, "cost": cost, "form": f.form, "best": f is best,
                          "exponent": f.exponent, "aicc": f.aicc, "n": f.n, "params": list(map(float, f.params)),
                          "diagnostics": "; ".join(f.diagnostics)} for f in fits]
    return pd.DataFrame(rows), warnings


def decide(configs: pd.DataFrame, n_boot: int, seed: int = 0) -> dict:
    """Every rule, with intervals and warnings: the content of rules.json."""
    from analysis.caveats import data_limits

    fits, fit_warnings = scaling_fits(configs)
    result = {
        "configurations": int(len(configs)), "regimes": sorted(int(e) for e in configs["epochs"].unique()),
        "bootstrap_replicates": n_boot,
        "depth_vs_width": depth_vs_width(configs, n_boot, seed),
        "resolution_scaling": resolution_scaling(configs, n_boot, seed),
        "flops_vs_latency": flops_vs_latency(configs, n_boot, seed, noise_sd=_noise_sd(configs)),
        "extrapolation": extrapolation(configs, n_boot, seed),
        "scaling_fits_warnings": fit_warnings,
        "data_warnings": data_limits(configs),
    }
    result["extrapolation"]["short_regime_picks_long_winner"] = _short_picks_long(result["depth_vs_width"])
    return result | {"_fits": fits}


def _noise_sd(configs: pd.DataFrame) -> float:
    pooled = configs["pooled_var"].iloc[0] if "pooled_var" in configs else float("nan")
    return float(np.sqrt(pooled)) if np.isfinite(pooled) and pooled > 0 else 0.01


def _short_picks_long(dvw: dict):
    flip = dvw["flip"]
    return None if flip.get("flips") is None else not flip["flips"]
