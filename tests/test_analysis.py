"""Analysis on synthetic runs drawn from known laws with noise: intervals cover the truth,
the winning axis per regime and a regime flip are found, and each warning fires exactly
when its condition holds."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from analysis import caveats, rules
from analysis.fit import fit_best, fit_form
from analysis.recommend import recommend_from
from analysis.uncertainty import bootstrap, interval


def _power_draw(rng, b=0.3, n=27, noise=0.05):
    compute = np.geomspace(1e12, 1e16, n)
    error = 0.4 * (compute / 1e12) ** -b * np.exp(rng.normal(0, noise, n))
    return pd.DataFrame({"compute": compute, "error": error})


def test_fit_recovers_a_saturating_law_and_prefers_it():
    compute = np.geomspace(1e12, 1e17, 20)
    error = 0.5 * (compute / 1e12) ** -0.35 + 0.04
    best, fits = fit_best(compute, error * np.exp(np.random.default_rng(1).normal(0, 0.01, 20)))
    assert best.form == "saturating" and best.ok
    assert best.exponent == pytest.approx(0.35, abs=0.05) and best.params[2] == pytest.approx(0.04, abs=0.01)
    assert {f.form for f in fits} == {"power", "saturating", "log_quadratic"}


@pytest.mark.slow
def test_exponent_intervals_cover_the_truth_in_at_least_90_percent_of_draws():
    rng, truth, covered = np.random.default_rng(0), 0.3, 0
    draws = 50
    for _ in range(draws):
        data = _power_draw(rng, truth)
        fit = fit_form(data["compute"], data["error"], "power")
        refit = lambda d: {"b": fit_form(d["compute"], d["error"], "power", starts=[fit.params]).exponent}  # noqa
        boot = bootstrap(data.assign(epochs=1), refit, n=150, seed=int(rng.integers(1 << 30)))
        lo, hi = interval(boot["b"], estimate=fit.exponent, n=len(data), k=2)
        covered += lo <= truth <= hi
    assert covered / draws >= 0.9


def test_diagnostics_flag_a_parameter_at_its_bound():
    data = _power_draw(np.random.default_rng(0), b=7.0, noise=0.01)  # steeper than the bound of 5
    assert any("bound" in d for d in fit_form(data["compute"], data["error"], "power").diagnostics)
    clean = _power_draw(np.random.default_rng(0), b=0.3, noise=0.01)
    assert fit_form(clean["compute"], clean["error"], "power").diagnostics == ()


def _grid(beta_d, beta_w, epochs, rng, noise=0.02, seeds=1):
    rows = []
    for d, w, r in itertools.product((14, 26, 50, 101), (0.25, 0.5, 1.0, 2.0), (16, 24, 32)):
        flops = 1e5 * d * w ** 2 * r ** 2
        err = 0.5 * (d / 14) ** -beta_d * (w / 0.25) ** -beta_w * (r / 16) ** -0.2
        rows.append({"depth": d, "width": w, "resolution": r, "epochs": epochs, "flops": flops,
                     "latency_ms": flops / 1e6 * (1 + 0.3 * np.log(d)), "params": d * w ** 2 * 1e4,
                     "activations": flops / 10, "train_images": 1000, "native_resolution": 32,
                     "error": err * np.exp(rng.normal(0, noise)), "n_seeds": seeds, "pooled_var": np.nan,
                     "minival/top1": 1 - err * np.exp(rng.normal(0, noise))})
    out = pd.DataFrame(rows)
    out["compute"] = 3 * out["flops"] * out["train_images"] * out["epochs"]
    return out


def test_winning_axis_per_regime_and_the_flip_are_found():
    rng = np.random.default_rng(0)
    # per unit log-compute (depth ~ C^1, width ~ C^2): short 0.05 vs 0.2 -> width; long 0.4 vs 0.05 -> depth
    configs = pd.concat([_grid(0.05, 0.4, 10, rng), _grid(0.4, 0.1, 100, rng)], ignore_index=True)
    result = rules.depth_vs_width(configs, 200)
    assert result["by_regime"][10]["winner"] == "width" and result["by_regime"][10]["p_depth_better"] < 0.05
    assert result["by_regime"][100]["winner"] == "depth" and result["by_regime"][100]["p_depth_better"] > 0.95
    assert result["flip"]["flips"] is True and result["flip"]["from"] == [10, "width"]
    assert result["flip"]["to"] == [100, "depth"] and result["warnings"] == []


def test_slow_resolution_scaling_is_measured_on_the_frontier():
    configs = _grid(0.3, 0.2, 100, np.random.default_rng(0), noise=0.01)
    res = rules.resolution_scaling(configs, n_boot=100)["by_regime"][100]
    for key in ("a_depth", "a_width", "a_resolution"):
        lo, hi = res[key]["interval"]
        assert lo <= res[key]["estimate"] <= hi
    assert 0 <= res["p_slower_than_efficientnet"] <= 1 and res["selected_on"] == "minival"
    assert res["slower_than_efficientnet"] in ("slower", "not_slower", "undecided")


def test_flops_vs_latency_and_extrapolation_report_every_regime():
    configs = _grid(0.3, 0.2, 100, np.random.default_rng(0))
    fl = rules.flops_vs_latency(configs, n_boot=50)["by_regime_and_size"]
    assert {"100/small", "100/large", "100/pairs"} <= fl.keys()
    assert fl["100/small"]["flops"]["spearman"] < 0  # more compute, less error
    ex = rules.extrapolation(configs, n_boot=50)["by_regime"][100]
    assert ex["held_out"] >= 2 and 0 <= ex["prediction_interval_coverage"] <= 1


def test_unstable_warning_fires_only_between_0_1_and_0_9():
    assert caveats.unstable("x", 0.5) and caveats.unstable("x", 0.11)
    assert not caveats.unstable("x", 0.95) and not caveats.unstable("x", 0.05)


def test_data_warnings_fire_exactly_when_their_condition_holds():
    rng = np.random.default_rng(0)
    one_seed = _grid(0.3, 0.2, 100, rng)
    codes = lambda c: [w["code"] for w in caveats.data_limits(c)]  # noqa: E731
    assert codes(one_seed) == ["too_few"]  # one seed everywhere
    assert codes(one_seed.assign(n_seeds=2)) == []
    assert codes(one_seed.assign(n_seeds=2).head(3)) == ["too_few"]  # a regime with 3 configurations
    assert codes(one_seed.assign(n_seeds=2, native_resolution=24)) == ["above_native_resolution"]


def test_regime_and_range_warnings_in_recommend():
    configs = _grid(0.3, 0.2, 100, np.random.default_rng(0))
    inside = recommend_from(configs, 100, latency_ms=float(configs["latency_ms"].median()))
    assert inside["warnings"] == []
    assert inside["latency_ms"] <= configs["latency_ms"].median()
    best_in_budget = configs[configs["latency_ms"] <= configs["latency_ms"].median()]["error"].min()
    assert inside["expected_error"] == pytest.approx(best_in_budget)
    lo, hi = inside["interval_90"]
    assert lo < inside["expected_error"] < hi
    outside = recommend_from(configs, 350, flops=float(configs["flops"].max() * 10))
    assert [w["code"] for w in outside["warnings"]] == ["regime_mismatch", "beyond_range"]
    with pytest.raises(LookupError, match="cheapest observed"):
        recommend_from(configs, 100, flops=1.0)


def test_recommend_chooses_on_minival_never_on_test():
    configs = _grid(0.3, 0.2, 100, np.random.default_rng(0))
    # Minival says the opposite of test: the choice must follow minival.
    configs["minival/top1"] = configs["error"]
    chosen = recommend_from(configs, 100, latency_ms=float(configs["latency_ms"].max()))
    assert chosen["selected_on"] == "minival/top1"
    assert chosen["expected_error"] == pytest.approx(configs["error"].max())


def test_fit_warnings_fire_for_short_axis_lines(monkeypatch):
    configs = _grid(0.3, 0.2, 100, np.random.default_rng(0))  # lines of 4 depths, 4 widths, 3 resolutions
    fits, warnings = rules.scaling_fits(configs)
    assert {"depth", "width", "resolution"} == set(fits["axis"])
    short = [w["message"] for w in warnings if w["code"] == "too_few"]
    assert any("resolution scaling" in m and "3 configurations" in m for m in short)
    assert any("depth scaling" in m and "4 configurations" in m for m in short)
    monkeypatch.setattr(caveats, "MIN_CONFIGS", 3)
    _, warnings = rules.scaling_fits(configs)
    assert not [w for w in warnings if w["code"] == "too_few"]


def test_fit_failed_warning_fires_only_when_no_form_passes_its_diagnostics(monkeypatch):
    from analysis import fit

    monkeypatch.setattr(fit, "FORMS", {"power": fit.FORMS["power"]})
    monkeypatch.setattr(caveats, "MIN_CONFIGS", 3)
    steep = _grid(7.0, 0.2, 100, np.random.default_rng(0), noise=0.001)  # depth exponent beyond the bound
    _, warnings = rules.scaling_fits(steep)
    assert any(w["code"] == "fit_failed" and "depth scaling vs compute" in w["message"] for w in warnings)
    _, warnings = rules.scaling_fits(_grid(0.3, 0.2, 100, np.random.default_rng(0), noise=0.001))
    assert not [w for w in warnings if w["code"] == "fit_failed"]
