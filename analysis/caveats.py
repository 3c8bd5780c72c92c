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
        return [_w("unstable", f"{context}: the decision is unstable (probability {p:.2f} across the "
                               "estimate's draws); more configurations or seeds would settle it.")]
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
        out.append(_w("too_few", "every configuration has one seed: seed noise is estimated from the scatter "
                                 "of configurations around the fitted laws (mixed with their lack of fit), not "
                                 "measured; a second seed (seeds=2) measures it."))
    if "native_resolution" in configs and (configs["resolution"] > configs["native_resolution"]).any():
        above = sorted(configs.loc[configs["resolution"] > configs["native_resolution"], "resolution"].unique())
        out.append(_w("above_native_resolution", f"resolutions {above} exceed the data set's native "
                                                 f"{int(configs['native_resolution'].max())} px: upsampled "
                                                 "images add compute but no information."))
    return out


def frontier_edges(context: str, front: pd.DataFrame, regime: pd.DataFrame) -> list[dict[str, str]]:
    """The frontier runs into an edge of the grid or of the data: past it, resolution (or
    depth, width) could not grow, so a small exponent there reads as a finding it is not."""
    out, top = [], front.iloc[-1]
    if top["resolution"] >= regime["resolution"].max():
        out.append(_w("frontier_at_grid_edge", f"{context}: the frontier's largest model uses the grid's largest "
                                               f"resolution ({int(top['resolution'])} px); resolution could not "
                                               "grow further, so its exponent is a lower bound and 'slow "
                                               "resolution scaling' may be the grid's edge, not a finding."))
    if "native_resolution" in front and (front["resolution"] >= front["native_resolution"]).any():
        out.append(_w("frontier_at_native_resolution", f"{context}: the frontier reaches the data's native "
                                                       f"{int(front['native_resolution'].max())} px; larger "
                                                       "resolutions only upsample, so resolution cannot pay "
                                                       "off beyond it."))
    for axis in ("depth", "width"):
        if top[axis] >= regime[axis].max():
            out.append(_w("frontier_at_grid_edge", f"{context}: the frontier's largest model uses the grid's "
                                                   f"largest {axis} ({top[axis]:g}); its exponent is bounded "
                                                   "by the grid."))
    return out


def exponent_sum(context: str, total: float, tol: float = 0.15) -> list[dict[str, str]]:
    """FLOPs ~ d w^2 r^2, so along any path d + 2w + 2r exponents add up to about 1."""
    if abs(total - 1) <= tol:
        return []
    return [_w("exponent_sum", f"{context}: the frontier exponents give d + 2w + 2r = {total:.2f}, not about 1 "
                               "(FLOPs ~ d w^2 r^2): the frontier is too ragged, or FLOPs do not follow that form "
                               "here, to read the exponents as a scaling rule.")]


def selected_on_test(context: str) -> dict[str, str]:
    return _w("selected_on_test", f"{context}: the runs have no minival accuracy, so the frontier was chosen on "
                                  "test error, which makes the test numbers optimistic.")
