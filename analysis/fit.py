"""Error-vs-compute laws fitted in log-error space with a robust (Huber) loss.

Forms (x is compute divided by its geometric mean, so every parameter is of order one):
- power:          e = a x^-b
- saturating:     e = a x^-b + c          (c: the error no amount of compute removes)
- log_quadratic:  log e = p0 + p1 log x + p2 (log x)^2   (curvature without an asymptote)

Each form is fitted from several starting points (`scipy.optimize.least_squares`,
loss='huber'); the best start is kept and diagnosed: not converged, a parameter at a bound,
starts that disagree. Forms are compared by AICc (AIC with the small-sample correction, as
lines hold 3-7 points) on the squared log-error residuals at the optimum.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product
from typing import Callable

import numpy as np
from scipy.optimize import least_squares

HUBER_SCALE = 0.1  # residuals (in log error) beyond ~10% count linearly, not quadratically


def training_compute(flops, train_images, epochs):
    """Training FLOPs = 3 x forward FLOPs (forward + backward) x images x epochs."""
    return 3 * np.asarray(flops, float) * np.asarray(train_images, float) * np.asarray(epochs, float)


@dataclass(frozen=True)
class Form:
    name: str
    predict: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (params, x) -> error
    n_params: int
    starts: Callable[[np.ndarray, np.ndarray], list[np.ndarray]]
    bounds: Callable[[np.ndarray], tuple[list[float], list[float]]]
    exponent_index: int | None  # which parameter is the power-law exponent b


def _power(p, x):
    return p[0] * x ** -p[1]


def _saturating(p, x):
    return p[0] * x ** -p[1] + p[2]


def _log_quadratic(p, x):
    lx = np.log(x)
    return np.exp(p[0] + p[1] * lx + p[2] * lx ** 2)


FORMS = {
    "power": Form("power", _power, 2,
                  lambda x, e: [np.array([np.exp(np.mean(np.log(e))), b]) for b in (0.05, 0.3, 1.0)],
                  lambda e: ([1e-12, -1.0], [np.inf, 5.0]), 1),
    "saturating": Form("saturating", _saturating, 3,
                       lambda x, e: [np.array([max(np.median(e) - c, 1e-6), b, c])
                                     for b, c in product((0.1, 0.5, 1.5), (0.0, 0.5 * e.min(), 0.9 * e.min()))],
                       lambda e: ([1e-12, 0.0, 0.0], [np.inf, 5.0, float(e.min()) * 0.999 + 1e-12]), 1),
    "log_quadratic": Form("log_quadratic", _log_quadratic, 3,
                          lambda x, e: [np.array([np.mean(np.log(e)), s, q]) for s in (-0.5, -0.1)
                                        for q in (0.0, 0.05)],
                          lambda e: ([-np.inf, -np.inf, -np.inf], [np.inf, np.inf, np.inf]), None),
}


@dataclass(frozen=True)
class Fit:
    form: str
    params: np.ndarray
    x_ref: float              # compute that maps to x = 1
    n: int
    cost: float               # Huber cost at the optimum
    aicc: float               # small-sample AIC; inf when n <= k + 1
    diagnostics: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.diagnostics

    @property
    def exponent(self) -> float | None:
        i = FORMS[self.form].exponent_index
        return None if i is None else float(self.params[i])

    def predict(self, compute) -> np.ndarray:
        return FORMS[self.form].predict(self.params, np.asarray(compute, float) / self.x_ref)


def fit_form(compute, error, form: str, starts: list[np.ndarray] | None = None) -> Fit:
    """Fit one form; `starts` overrides the form's own starting points (bootstrap refits)."""
    f = FORMS[form]
    x_ref = float(np.exp(np.mean(np.log(compute))))
    x, e = np.asarray(compute, float) / x_ref, np.asarray(error, float)
    if len(e) <= f.n_params:
        raise ValueError(f"{form} needs more than {f.n_params} configurations, got {len(e)}")
    lo, hi = f.bounds(e)

    def residuals(p):
        return np.log(np.clip(f.predict(p, x), 1e-12, None)) - np.log(e)

    results = []
    for p0 in starts or f.starts(x, e):
        p0 = np.clip(p0, np.array(lo) + 1e-9, np.array(hi) - 1e-9)
        try:
            results.append(least_squares(residuals, p0, bounds=(lo, hi), loss="huber", f_scale=HUBER_SCALE))
        except ValueError:
            continue
    if not results:
        raise ValueError(f"{form}: no start could be fitted")
    best = min(results, key=lambda r: r.cost)
    sse = float(np.sum(best.fun ** 2))
    return Fit(form, best.x, x_ref, len(e), float(best.cost), aicc(sse, len(e), f.n_params),
               _diagnose(best, results, lo, hi, f, x))


def aicc(sse: float, n: int, n_params: int) -> float:
    """AICc of a least-squares fit (Gaussian residuals; the variance counts as a parameter)."""
    k = n_params + 1
    if n - k - 1 <= 0:
        return float("inf")
    return float(n * np.log(max(sse, 1e-300) / n) + 2 * k + 2 * k * (k + 1) / (n - k - 1))


def _diagnose(best, results, lo, hi, f: Form, x) -> tuple[str, ...]:
    notes = []
    if best.status <= 0:
        notes.append(f"{f.name}: the optimizer did not converge ({best.message})")
    for i, (v, a, b) in enumerate(zip(best.x, lo, hi)):
        tol = 1e-6 * (1 + abs(v))
        if (np.isfinite(a) and v - a < tol) or (np.isfinite(b) and b - v < tol):
            if not (f.name == "saturating" and i == 2 and np.isfinite(a) and v - a < tol):
                notes.append(f"{f.name}: parameter {i} sits at its bound ({v:.3g})")
    grid = np.geomspace(x.min(), x.max(), 16)
    ref = f.predict(best.x, grid)
    near = [r for r in results if r.cost <= best.cost * 1.01 + 1e-12 and r is not best]
    if any(np.max(np.abs(np.log(f.predict(r.x, grid) / ref))) > 0.05 for r in near):
        notes.append(f"{f.name}: starts with equal cost disagree by more than 5% inside the data")
    return tuple(notes)


def fit_best(compute, error) -> tuple[Fit, list[Fit]]:
    """Every form the data can support (more points than parameters); the lowest-AICc fit
    whose diagnostics are clean (else the lowest AICc), and all fits."""
    fits = [fit_form(compute, error, name) for name, f in FORMS.items() if len(error) > f.n_params]
    if not fits:
        raise ValueError(f"too few configurations to fit ({len(error)})")
    clean = [f for f in fits if f.ok] or fits
    return min(clean, key=lambda f: f.aicc), fits
