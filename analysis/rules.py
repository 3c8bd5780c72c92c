"""The scaling rules, each answered with an estimate, a bootstrap interval and warnings.

Input: one row per configuration (analysis.load.by_configuration). The depth and width
"lines" of a regime run through its base model (smallest width and depth) at each resolution:
the depth line varies depth at the base width, the width line varies width at the base depth.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from analysis import caveats as warn
from analysis.fit import fit_best, fit_form, training_compute
from analysis.uncertainty import bootstrap, interval, probability

EFFICIENTNET_RESOLUTION_EXPONENT = 0.214  # 1.15^phi per 2^phi FLOPs (Tan & Le 2019)
COLUMNS = {"model.width": "width", "model.depth": "depth", "data.resolution": "resolution",
           "recipe.epochs": "epochs", "data.train_images": "train_images",
           "data.native_resolution": "native_resolution"}


def tidy(configs: pd.DataFrame) -> pd.DataFrame:
    out = configs.rename(columns=COLUMNS).copy()
    out["compute"] = training_compute(out["flops"], out["train_images"], out["epochs"])
    return out


# --- depth vs width ---------------------------------------------------------------------
# A regime's configurations give a log-error surface, log e = a + b_d ld + b_dd ld^2 + b_w lw
# + b_ww lw^2 + b_r lr (l = log of depth, width, resolution), and the compute elasticities of
# each axis, log C = g0 + g_d ld + g_w lw + g_r lr. Scaling depth alone from the base model
# (smallest depth and width) and scaling width alone reach each compute C at a different
# error; their difference at matched compute, averaged over resolutions, decides the rule.

def _surface(regime: pd.DataFrame):
    ld, lw, lr = (np.log(regime[c].to_numpy(float)) for c in ("depth", "width", "resolution"))
    if min(len(set(ld)), len(set(lw))) < 3:
        raise ValueError("depth and width need 3 distinct values each")
    X = np.column_stack([np.ones_like(ld), ld, ld ** 2, lw, lw ** 2, lr])
    beta = np.linalg.lstsq(X, np.log(regime["error"].to_numpy(float)), rcond=None)[0]
    gamma = np.linalg.lstsq(X[:, [0, 1, 3, 5]], np.log(regime["compute"].to_numpy(float)), rcond=None)[0]
    return beta, gamma


def _path_log_error(beta, gamma, log_c, axis: str, base: dict, lr: float):
    """log error along one axis from the base model, at log compute `log_c`."""
    g0, g_d, g_w, g_r = gamma
    ld, lw = np.log(base["depth"]), np.log(base["width"])
    if axis == "depth":
        ld = (log_c - g0 - g_w * lw - g_r * lr) / g_d
    else:
        lw = (log_c - g0 - g_d * ld - g_r * lr) / g_w
    return beta @ np.array([1, ld, ld ** 2, lw, lw ** 2, lr])


def depth_width_gap(regime: pd.DataFrame) -> dict[str, float]:
    """error(depth scaling) - error(width scaling) at matched compute (negative: depth wins),
    halfway (in log compute) along the stretch both paths cover within the observed depths
    and widths, averaged over resolutions; and the log10 training compute (mean over the
    base models) where the sign changes on that stretch (NaN if it does not)."""
    beta, gamma = _surface(regime)
    base = {"depth": regime["depth"].min(), "width": regime["width"].min()}
    # Both paths start at the base model; each reaches as far as its axis was observed.
    reach = min(gamma[1] * np.log(regime["depth"].max() / base["depth"]),
                gamma[2] * np.log(regime["width"].max() / base["width"]))
    steps = np.linspace(0, reach, 64)
    gaps = []
    for r in sorted(regime["resolution"].unique()):
        lr = np.log(r)
        c0 = gamma @ np.array([1, np.log(base["depth"]), np.log(base["width"]), lr])
        gaps.append([np.exp(_path_log_error(beta, gamma, c0 + t, "depth", base, lr))
                     - np.exp(_path_log_error(beta, gamma, c0 + t, "width", base, lr)) for t in steps])
    gap = np.mean(gaps, axis=0)
    mid = float(gap[len(steps) // 2])
    change = np.flatnonzero(np.diff(np.sign(gap[1:])) != 0) + 1
    c_base = np.log(regime.loc[(regime["depth"] == base["depth"]) & (regime["width"] == base["width"]),
                               "compute"]).mean()
    crossover = float((c_base + steps[change[0]]) / np.log(10)) if len(change) else np.nan
    return {"gap": mid, "depth_better": float(mid < 0), "log10_crossover": crossover}


def _per_regime(configs: pd.DataFrame, statistic, context: str, n_boot: int, seed: int, warnings: list):
    """(epochs, regime, estimate, bootstrap replicates) of every regime where `statistic` can
    be computed; a too_few warning for the others."""
    for epochs, regime in configs.groupby("epochs"):
        try:
            est = statistic(regime)
        except ValueError as e:
            warnings.append(warn.too_few(f"{context} at {epochs} epochs", str(e)))
            continue
        yield int(epochs), regime, est, bootstrap(regime, statistic, n_boot, seed, strata=None)


def depth_vs_width(configs: pd.DataFrame, n_boot: int, seed: int = 0) -> dict:
    by_regime, warnings = {}, []
    for epochs, regime, est, boot in _per_regime(configs, depth_width_gap, "depth vs width", n_boot, seed,
                                                 warnings):
        p = probability(boot["depth_better"]) if len(boot) else float("nan")
        c = est["log10_crossover"]
        by_regime[epochs] = {
            "winner": "depth" if est["gap"] < 0 else "width",
            "error_gap_depth_minus_width": {"estimate": est["gap"], "interval": interval(boot.get("gap", []))},
            "p_depth_better": p,
            "log10_crossover_compute": {"estimate": None if np.isnan(c) else c,
                                        "p_crossover_in_range": probability(np.isfinite(boot.get("log10_crossover",
                                                                                                  [np.nan]))),
                                        "interval": interval(boot.get("log10_crossover", []))},
            "replicates": len(boot),
        }
        warnings += warn.unstable(f"depth vs width at {epochs} epochs", p)
    return {"by_regime": by_regime, "flip": _flip(by_regime), "warnings": warnings}


def _flip(by_regime: dict) -> dict:
    if len(by_regime) < 2:
        return {"flips": None}
    short, long = by_regime[min(by_regime)], by_regime[max(by_regime)]
    ps, pl = short["p_depth_better"], long["p_depth_better"]
    return {"short_regime": min(by_regime), "long_regime": max(by_regime),
            "short_winner": short["winner"], "long_winner": long["winner"],
            "flips": short["winner"] != long["winner"],
            "p_flip": ps * (1 - pl) + (1 - ps) * pl}  # regimes use disjoint runs: independent


# --- slow resolution scaling -------------------------------------------------------------

def frontier(regime: pd.DataFrame, cost: str = "flops") -> pd.DataFrame:
    """Pareto-optimal configurations: lower error than every cheaper one."""
    ordered = regime.sort_values([cost, "error"])
    keep = ordered["error"] < ordered["error"].cummin().shift(fill_value=np.inf)
    return ordered[keep]


def frontier_exponents(regime: pd.DataFrame) -> dict[str, float]:
    front = frontier(regime)
    if front["flops"].nunique() < 3:
        raise ValueError("the frontier has fewer than 3 configurations")
    lc = np.log(front["flops"])
    slope = lambda col: float(np.polyfit(lc, np.log(front[col]), 1)[0])  # noqa: E731
    a = {f"a_{k}": slope(k) for k in ("depth", "width", "resolution")}
    a["slow"] = float(a["a_resolution"] < EFFICIENTNET_RESOLUTION_EXPONENT)
    a["r_below_depth"] = float(a["a_resolution"] < a["a_depth"])
    a["r_below_width"] = float(a["a_resolution"] < a["a_width"])
    return a


def resolution_scaling(configs: pd.DataFrame, n_boot: int, seed: int = 0) -> dict:
    out, warnings = {}, []
    for epochs, regime, est, boot in _per_regime(configs, frontier_exponents, "frontier exponents", n_boot, seed,
                                                 warnings):
        out[epochs] = {
            **{k: {"estimate": est[k], "interval": interval(boot.get(k, []))}
               for k in ("a_depth", "a_width", "a_resolution")},
            "p_slower_than_efficientnet": probability(boot.get("slow", [])),
            "p_resolution_below_depth": probability(boot.get("r_below_depth", [])),
            "p_resolution_below_width": probability(boot.get("r_below_width", [])),
            "frontier_size": int(len(frontier(regime))),
        }
        warnings += warn.unstable(f"slow resolution scaling at {epochs} epochs",
                                  out[epochs]["p_slower_than_efficientnet"])
    return {"reference_a_resolution": EFFICIENTNET_RESOLUTION_EXPONENT, "by_regime": out, "warnings": warnings}


# --- FLOPs vs latency --------------------------------------------------------------------

PREDICTORS = ("flops", "params", "activations", "latency_ms")


def rank_correlations(part: pd.DataFrame) -> dict[str, float]:
    if len(part) < 3:
        raise ValueError("fewer than 3 configurations")
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
    """Per regime: fit on the smaller 2/3 of configurations by compute, predict the rest."""
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
        lo, hi = (np.nanquantile(boot.to_numpy(), q, axis=0) for q in (0.05, 0.95))
        log_ratio = np.log(pred / test["error"].to_numpy())
        out[int(epochs)] = {"form": best.form, "fit_configurations": len(train), "held_out": len(test),
                            "mean_abs_log_error": float(np.mean(np.abs(log_ratio))),
                            "bias_log": float(np.mean(log_ratio)),
                            "interval_coverage": float(np.mean((test["error"] >= lo) & (test["error"] <= hi)))}
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
                          "exponent": f.exponent, "aic": f.aic, "n": f.n, "params": list(map(float, f.params)),
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
