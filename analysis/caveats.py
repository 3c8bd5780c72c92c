"""Warnings in plain words, each a dict {code, message}, attached to the decision it limits."""
from __future__ import annotations

import pandas as pd

UNSTABLE = (0.1, 0.9)   # a decision whose probability lies strictly inside is unstable
MIN_CONFIGS = 5         # fewer configurations than this in a fit: too few to trust its shape


def _w(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}


def too_few(context: str, detail: str) -> dict[str, str]:
    return _w("too_few", f"{context}: too few configurations to decide ({detail}).")


def unstable(context: str, p: float) -> list[dict[str, str]]:
    if UNSTABLE[0] < p < UNSTABLE[1]:
        return [_w("unstable", f"{context}: the decision is unstable (probability {p:.2f} across bootstrap "
                               "replicates); more configurations or seeds would settle it.")]
    return []


def fit_failed(context: str, diagnostic: str) -> dict[str, str]:
    return _w("fit_failed", f"{context}: the fit failed a diagnostic ({diagnostic}).")


def beyond_range(context: str, value: float, low: float, high: float) -> list[dict[str, str]]:
    if low <= value <= high:
        return []
    return [_w("beyond_range", f"{context}: {value:.3g} lies outside the observed range "
                               f"[{low:.3g}, {high:.3g}]; the rule is extrapolated there.")]


def regime_mismatch(requested: int, fitted: list[int]) -> list[dict[str, str]]:
    if requested in fitted:
        return []
    return [_w("regime_mismatch", f"{requested} epochs was not run (regimes fitted: {sorted(fitted)}); the "
                                  "nearest regime is used, and the best scaling can differ between regimes.")]


def data_limits(configs: pd.DataFrame) -> list[dict[str, str]]:
    """Sweep-wide: few configurations or seeds, resolution above the data's native one."""
    out = []
    per_regime = configs.groupby("epochs").size()
    if (per_regime < MIN_CONFIGS).any():
        out.append(_w("too_few", f"regimes with fewer than {MIN_CONFIGS} configurations: "
                                 f"{sorted(per_regime[per_regime < MIN_CONFIGS].index.tolist())}."))
    if configs["n_seeds"].max() < 2:
        out.append(_w("too_few", "every configuration has one seed: seed noise is not measured, so intervals "
                                 "only reflect the spread between configurations (run with seed=0,1,...)."))
    if "native_resolution" in configs and (configs["resolution"] > configs["native_resolution"]).any():
        above = sorted(configs.loc[configs["resolution"] > configs["native_resolution"], "resolution"].unique())
        out.append(_w("above_native_resolution", f"resolutions {above} exceed the data set's native "
                                                 f"{int(configs['native_resolution'].max())} px: upsampled "
                                                 "images add compute but no information."))
    return out
