"""Depth scaling against width scaling, per epoch regime and per resolution, as a three-valued
decision: `depth`, `width` or `undecided` (a regime's also `depends_on_resolution`).

The model. Within a regime, the log test error of each configuration (mean over its seeds) is
a quadratic surface in the logs of depth, width and resolution with their interactions:

    log e = b0 + b1 ld + b2 ld^2 + b3 lw + b4 lw^2 + b5 lr + b6 lr^2 + b7 ld lr + b8 lw lr + b9 ld lw

(terms a grid cannot identify are left out: lr^2 with 2 resolutions, the resolution terms with 1).
The depth x resolution and width x resolution terms let the winner change with resolution (the
paper's 100-epoch finding); an F test against the additive surface says whether the data need
them (reported), but decisions always use the full surface, so choosing a model never narrows
the intervals. Training compute follows log C = g0 + gd ld + gw lw + gr lr (exact FLOPs, fitted).

The statistic. From the base model (smallest depth and width) at a resolution, scaling depth
alone and scaling width alone reach each compute at a different error; the gap
e(depth path) - e(width path) (negative: depth wins) is read halfway, in log compute, along the
stretch both paths cover within the observed depths and widths. The regime's gap is its mean
over the grid's resolutions. Which path wins is decided on the log of the ratio,
log e(depth path) - log e(width path) (its mean over resolutions for the regime): at one
resolution it has the gap's sign, and it is linear in the surface's coefficients, so its
interval is an exact Student-t one, computed, not drawn (deciding on draws of the error gap's
mean over resolutions named a winner on planted ties in about 0.11 of simulated studies
instead of 0.10); the error gap and its interval from the draws are what the report shows.

The uncertainty. The surface is a linear model of configuration means: its coefficients'
sampling distribution is a multivariate t with n - p degrees of freedom around the
least-squares estimate, scaled by the residual variance (which holds seed noise and lack of
fit, so one seed is enough to estimate it), never below the variance the configurations' own
seeds show where they have 2+ (`seed_floor`). Where configurations have 2+ seeds, noise_split
measures how much of it seeds explain: more seeds shrink only that part, and the seeds a next
step names count it (analysis/next_step.py). Error gaps are computed on `draws` samples of it
(the reported interval: their 5-95% range); the log gap's t distribution gives P(depth better)
(its mass below zero) and the decision: made only when its interval at the level excludes
zero. Regimes use disjoint runs, so they are independent.
Tested by simulation from planted truths (analysis/simulate.py, tests/test_calibration.py).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from analysis.fit import aicc as fit_aicc
from analysis.uncertainty import LEVEL

MIN_RESIDUAL_DOF = 3
STEPS = 64


def design(ld, lw, lr, n_res: int, interactions: bool = True, compute=(1.0, 2.0)) -> np.ndarray:
    """Quadratic in log depth and log width, plus a cubic term in their compute coordinate
    u = gd ld + gw lw (so a law in compute alone, floor included, is followed closely and does
    not lean on the depth-width contrast), resolution terms, and the interactions."""
    u = compute[0] * ld + compute[1] * lw
    cols = [np.ones_like(ld), ld, ld ** 2, lw, lw ** 2, u ** 3]
    if n_res >= 2:
        cols += [lr]
    if n_res >= 3:
        cols += [lr ** 2]
    if interactions:
        cols += ([ld * lr, lw * lr] if n_res >= 2 else []) + [ld * lw]
    return np.column_stack(cols)


def centred_design(frame: pd.DataFrame, n_res: int | None = None, interactions: bool = True):
    """The surface's design matrix of these configurations, their logs centred on their means
    and the compute law fitted on them: (X, centre, gamma)."""
    centre = {a: float(np.log(frame[a].to_numpy(float)).mean()) for a in ("depth", "width", "resolution")}
    ld, lw, lr = (np.log(frame[a].to_numpy(float)) - centre[a] for a in ("depth", "width", "resolution"))
    G = np.column_stack([np.ones_like(ld), ld, lw, lr])
    gamma = np.linalg.lstsq(G, np.log(frame["compute"].to_numpy(float)), rcond=None)[0]
    n_res = frame["resolution"].nunique() if n_res is None else n_res
    return design(ld, lw, lr, n_res, interactions, (gamma[1], gamma[2])), centre, gamma


class Surface:
    """The fitted log-error surface and compute law of one regime (centred logs)."""

    def __init__(self, regime: pd.DataFrame, interactions: bool = True):
        self.resolutions = sorted(regime["resolution"].unique())
        self.n_res, self.interactions = len(self.resolutions), interactions
        if min(regime["depth"].nunique(), regime["width"].nunique()) < 3:
            raise ValueError("depth and width need 3 distinct values each")
        X, self.centre, self.gamma = centred_design(regime, self.n_res, interactions)
        self.n, self.p = X.shape
        if self.n - self.p < MIN_RESIDUAL_DOF or np.linalg.matrix_rank(X) < self.p:
            raise ValueError(f"{self.n} configurations cannot fit a surface of {self.p} terms "
                             f"with {MIN_RESIDUAL_DOF} degrees of freedom left")
        y = np.log(regime["error"].to_numpy(float))
        self.beta, rss = np.linalg.lstsq(X, y, rcond=None)[:2]
        self.rss = float(rss[0]) if len(rss) else float(np.sum((y - X @ self.beta) ** 2))
        self.dof = self.n - self.p
        self.residual_var = self.rss / self.dof
        self.sigma2 = max(self.residual_var, seed_floor(regime))
        self.cov = self.sigma2 * np.linalg.inv(X.T @ X)
        self.base = (self._log(regime["depth"].min(), "depth"), self._log(regime["width"].min(), "width"))
        self.reach = min(self.gamma[1] * (self._log(regime["depth"].max(), "depth") - self.base[0]),
                         self.gamma[2] * (self._log(regime["width"].max(), "width") - self.base[1]))

    def _design(self, ld, lw, lr) -> np.ndarray:
        return design(ld, lw, lr, self.n_res, self.interactions, (self.gamma[1], self.gamma[2]))

    def _log(self, x, axis):
        return np.log(np.asarray(x, float)) - self.centre[axis]

    def features(self, frame: pd.DataFrame) -> np.ndarray:
        """Design rows of configurations (columns depth, width, resolution)."""
        return self._design(*(self._log(frame[a], a) for a in ("depth", "width", "resolution")))

    def draws(self, n: int, seed: int) -> np.ndarray:
        """n coefficient vectors from the estimate's multivariate-t sampling distribution."""
        rng = np.random.default_rng(seed)
        z = rng.multivariate_normal(np.zeros(self.p), self.cov, size=n, method="cholesky")
        return self.beta + z * np.sqrt(self.dof / rng.chisquare(self.dof, size=(n, 1)))

    def path_features(self, resolution: float, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Design rows of the depth path and the width path, `t` log-compute past the base."""
        lr = np.full_like(t, self._log(resolution, "resolution"))
        ld0, lw0 = np.full_like(t, self.base[0]), np.full_like(t, self.base[1])
        on_depth = self._design(ld0 + t / self.gamma[1], lw0, lr)
        on_width = self._design(ld0, lw0 + t / self.gamma[2], lr)
        return on_depth, on_width

    def gaps(self, betas: np.ndarray, resolution: float, t: np.ndarray) -> np.ndarray:
        """error(depth path) - error(width path), one row per coefficient vector, one column per t."""
        on_depth, on_width = self.path_features(resolution, t)
        return np.exp(betas @ on_depth.T) - np.exp(betas @ on_width.T)

    def log_gap(self, resolutions, t: float) -> tuple[float, float, int]:
        """log error(depth path) - log error(width path) at `t`, averaged over `resolutions`: a
        linear contrast of the coefficients, so (estimate, standard error, degrees of freedom)
        give its exact Student-t distribution."""
        rows = [np.subtract(*self.path_features(r, np.array([t])))[0] for r in resolutions]
        c = np.mean(rows, axis=0)
        return float(c @ self.beta), float(np.sqrt(c @ self.cov @ c)), self.dof


def interaction_test(regime: pd.DataFrame, full: Surface) -> dict:
    """Does the surface need the interaction terms? F test of the full surface (fitted to
    `regime`) against the additive one, and their small-sample AIC (AICc)."""
    try:
        additive = Surface(regime, False)
    except ValueError:
        return {"needed": None, "p_value": None}
    extra = full.p - additive.p
    f = ((additive.rss - full.rss) / extra) / (full.rss / full.dof) if full.rss > 0 else np.inf
    p = float(stats.f.sf(f, extra, full.dof))
    aicc = {name: fit_aicc(s.rss, s.n, s.p) for name, s in (("additive", additive), ("interactions", full))}
    return {"needed": p < 1 - LEVEL, "p_value": p, "aicc": aicc}


def decide_gap(samples: np.ndarray, estimate: float, log_gap: tuple[float, float, int], level: float = LEVEL) -> dict:
    """The three-valued decision on a gap (negative: depth better): decided when the Student-t
    interval at `level` of the log gap (`log_gap`: its estimate, standard error and degrees of
    freedom) excludes zero; P(depth better) is the same t distribution's mass below zero. The
    reported interval is the error gap's 90% one, from its draws `samples`."""
    lo, hi = (float(np.quantile(samples, q)) for q in ((1 - LEVEL) / 2, (1 + LEVEL) / 2))
    est, se, dof = log_gap
    z = est / se if se > 0 else np.sign(est) * np.inf
    bound = float(stats.t.ppf((1 + level) / 2, dof))
    winner = "depth" if z < -bound else "width" if z > bound else "undecided"
    return {"winner": winner, "p_depth_better": float(stats.t.cdf(-z, dof)),
            "error_gap_depth_minus_width": {"estimate": float(estimate), "interval": [lo, hi]},
            "log_gap": {"estimate": est, "se": se, "dof": int(dof), "z": float(z), "bound": bound}}


def regime_decision(regime: pd.DataFrame, draws: int, seed: int, seeds_per_config: float) -> dict:
    """The regime's decision, per resolution and overall, with what would settle it."""
    s = Surface(regime)
    betas = s.draws(draws, seed)
    t = np.linspace(0, s.reach, STEPS)
    mid = STEPS // 2
    # Per resolution, each claim is made at a Bonferroni level, so that the regime's claims
    # together (its winner, or `depends_on_resolution`) stay near the configured error rate.
    per_res, est_curves, draw_curves = {}, [], []
    res_level = 1 - (1 - LEVEL) / len(s.resolutions)
    for r in s.resolutions:
        est_curve = s.gaps(s.beta[None, :], r, t)[0]
        draw_curve = s.gaps(betas, r, t)
        est_curves.append(est_curve)
        draw_curves.append(draw_curve)
        per_res[int(r)] = decide_gap(draw_curve[:, mid], est_curve[mid], s.log_gap([r], t[mid]), res_level)
    est_mean, draws_mean = np.mean(est_curves, axis=0), np.mean(draw_curves, axis=0)
    overall = decide_gap(draws_mean[:, mid], est_mean[mid], s.log_gap(s.resolutions, t[mid]))
    decided = {d["winner"] for d in per_res.values()} - {"undecided"}
    if len(decided) > 1:
        overall["winner"] = "depends_on_resolution"
    overall |= {"by_resolution": per_res, "interactions": interaction_test(regime, s),
                "log10_crossover_compute": _crossover(est_mean, draws_mean, t, regime),
                "residual_sd_log_error": float(np.sqrt(s.sigma2)), "noise": noise_split(s, regime),
                "draws": int(draws),
                "configurations": int(s.n)}
    if overall["winner"] == "undecided":
        overall["would_decide"] = would_decide(overall, seeds_per_config)
    return overall


def _crossover(est, draws, t, regime) -> dict:
    """Where the averaged gap changes sign on the compared stretch (log10 training compute)."""
    base = regime[(regime["depth"] == regime["depth"].min()) & (regime["width"] == regime["width"].min())]
    c_base = float(np.log(base["compute"]).mean())
    change = np.flatnonzero(np.diff(np.sign(est[1:])) != 0) + 1
    estimate = float((c_base + t[change[0]]) / np.log(10)) if len(change) else None
    in_range = np.mean(np.any(np.diff(np.sign(draws[:, 1:]), axis=1) != 0, axis=1))
    return {"estimate": estimate, "p_crossover_in_range": float(in_range)}


def would_decide(decision: dict, seeds_per_config: float) -> str:
    """What more seeds would do for an undecided rule, if its estimate held (next_step.py says
    it with the command)."""
    from analysis.next_step import HOPELESS, seeds_needed, why_not

    log_gap, noise = decision["log_gap"], decision["noise"]
    seeds = seeds_needed(log_gap["z"], log_gap["bound"], seeds_per_config, noise["seed_share"])
    if seeds is None or seeds > HOPELESS * max(seeds_per_config, 1):
        return "more seeds will not decide it: " + why_not(noise)
    return f"about {seeds} seeds per configuration (now {seeds_per_config:g}), if the estimated gap holds"


def seed_var_log(regime: pd.DataFrame) -> float | None:
    """Seed noise of one run's log error, pooled over the regime's configurations with 2+ seeds
    (each one's seed variance of the error over its squared mean: the delta method); None when
    every configuration has one seed."""
    if "error_var" not in regime:
        return None
    dof = (regime["n_seeds"] - 1).clip(lower=0)
    if dof.sum() == 0:
        return None
    relative = regime["error_var"].fillna(0) / regime["error"] ** 2
    return float((relative * dof).sum() / dof.sum())


def seed_floor(regime: pd.DataFrame) -> float:
    """The variance of a configuration mean's log error that its own seeds show (pooled seed
    variance x mean(1 / n_seeds)); 0 with one seed per configuration. The surface's variance is
    never taken below it: a residual on few degrees of freedom can fall under the seeds' noise
    by chance, and an adaptive study, which looks after every round, meets that chance (a real
    `make decide` decided 'depth at 4 epochs' at z = -3.9 on a residual sd of 0.049 where its
    seeds showed 0.117; the full grid left that regime undecided)."""
    seed_var = seed_var_log(regime)
    return seed_var * float(np.mean(1 / regime["n_seeds"].to_numpy(float))) if seed_var else 0.0


def noise_split(s: Surface, regime: pd.DataFrame) -> dict:
    """How much of the surface's residual variance seeds explain. The residual of configuration
    means holds their seed noise (a run's seed variance over its seeds) and the surface's lack
    of fit, which more seeds do not shrink. `seed_share`: the seed part's share (None with one
    seed per configuration: then the residual is taken as seed noise, an assumption the report
    states); `lack_of_fit_p`: the F test of the residual against seed noise alone."""
    residual = {"residual_sd": float(np.sqrt(s.residual_var))}
    seed_var = seed_var_log(regime)
    if seed_var is None or s.residual_var <= 0:
        return residual | {"seed_share": None, "seed_sd_of_means": None, "lack_of_fit_p": None}
    of_means = seed_floor(regime)
    pure_dof = float((regime["n_seeds"] - 1).clip(lower=0).sum())
    p = float(stats.f.sf(s.residual_var / of_means, s.dof, pure_dof)) if of_means > 0 else 0.0
    return residual | {"seed_share": float(min(1.0, of_means / s.residual_var)),
                       "seed_sd_of_means": float(np.sqrt(of_means)), "lack_of_fit_p": p}


def depth_vs_width(configs: pd.DataFrame, draws: int = 1000, seed: int = 0) -> dict:
    """Every regime's decision and the flip between regimes (rules.json's `depth_vs_width`)."""
    from analysis import caveats as warn

    by_regime, warnings = {}, []
    for i, (epochs, regime) in enumerate(sorted(configs.groupby("epochs"), key=lambda g: g[0])):
        try:
            d = regime_decision(regime, draws, seed + i, float(regime["n_seeds"].mean()))
        except ValueError as e:
            warnings.append(warn.too_few(f"depth vs width at {epochs} epochs", str(e)))
            continue
        by_regime[int(epochs)] = d
        warnings += warn.unstable(f"depth vs width at {epochs} epochs", d["p_depth_better"])
    return {"by_regime": by_regime, "flip": flip(by_regime), "warnings": warnings}


def flip(by_regime: dict) -> dict:
    """Does the winner change between epoch regimes? `flips` is true only when two regimes
    have decided, different winners; false when every regime decided the same winner; None
    (undecided) otherwise."""
    if len(by_regime) < 2:
        return {"flips": None, "reason": "fewer than two regimes"}
    winners = {e: d["winner"] for e, d in sorted(by_regime.items())}
    decided = {e: w for e, w in winners.items() if w in ("depth", "width")}
    short, long = min(by_regime), max(by_regime)
    ps, pl = by_regime[short]["p_depth_better"], by_regime[long]["p_depth_better"]
    out = {"winners": winners, "short_regime": short, "long_regime": long,
           "p_flip": ps * (1 - pl) + (1 - ps) * pl}  # disjoint runs: the regimes' draws are independent
    if len(set(decided.values())) > 1:
        first = next(e for e, w in decided.items() if w != decided[min(decided)])
        return out | {"flips": True, "from": [min(decided), decided[min(decided)]], "to": [first, decided[first]]}
    if len(decided) == len(winners):
        return out | {"flips": False}
    return out | {"flips": None, "reason": "not every regime is decided"}
