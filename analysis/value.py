"""The value of training a candidate, planned on a regime's fitted depth-vs-width surface
(analysis/depth_width.py): how much each candidate, alone and after the ones picked before
it, raises the chance that the regime's open rules get settled. analysis/adaptive.py turns
this into a round's batch.

For each open rule (a regime's gap, or one resolution's) the plan holds the statistic it is
decided on, the log gap g = J beta (linear: J is the contrast of the two paths' design rows,
averaged over the rule's resolutions), and its standard error s = sqrt(sigma2 J (X'X)^-1 J'). A new configuration x adds x x' to X'X (Sherman-Morrison) and
a residual degree of freedom; one more seed of a configuration lowers the residual variance by
that seed's share of the seed noise. With the estimate's move from the new data taken as normal
with variance v = s^2 - s'^2, the chance the rule is settled afterwards is
Phi((g - q s') / sqrt(v)) + Phi((-g - q s') / sqrt(v)), q the t quantile at its settle level.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from analysis.depth_width import STEPS, Surface, seed_var_log

AXES = ["depth", "width", "resolution"]


class Plan:
    """One regime's surface, the open rules it can move, and the state of a batch being picked:
    X'X inverse, residual degrees of freedom and variance, each rule's variance of movement."""

    def __init__(self, surface: Surface, X: np.ndarray, rules: list, settle_level: float,
                 seed_var: float, n_seeds: np.ndarray, keys: list[tuple]):
        self.s = surface
        self.Ainv = np.linalg.pinv(X.T @ X)
        self.dof = len(X) - surface.p
        self.sigma2 = surface.sigma2
        self.seed_var, self.X, self.n_seeds = seed_var, X, n_seeds.astype(float)
        self.row = {key: i for i, key in enumerate(keys)}  # configuration -> its row of X
        t_mid = np.array([np.linspace(0, surface.reach, STEPS)[STEPS // 2]])
        self.rules, g, J, self.levels = [], [], [], []
        res_level = 1 - (1 - settle_level) / len(surface.resolutions)
        for rule in rules:
            if rule.resolution is not None and rule.resolution not in surface.resolutions:
                continue
            at = surface.resolutions if rule.resolution is None else [rule.resolution]
            # the statistic a rule is decided on: the log gap, linear in the coefficients
            grad = np.mean([np.subtract(*surface.path_features(r, t_mid))[0] for r in at], axis=0)
            self.rules.append(rule)
            g.append(float(grad @ surface.beta))
            J.append(grad)
            self.levels.append(settle_level if rule.resolution is None else res_level)
        self.g, self.J = np.array(g), np.array(J).reshape(len(g), surface.p)
        self.move = np.zeros(len(self.g))
        self.s0 = self.se(self.Ainv, self.sigma2)

    def se(self, Ainv, sigma2) -> np.ndarray:
        return np.sqrt(np.maximum(sigma2 * np.einsum("kp,pq,kq->k", self.J, Ainv, self.J), 0))

    def p_settled(self, Ainv=None, dof=None, sigma2=None, move=None) -> np.ndarray:
        Ainv = self.Ainv if Ainv is None else Ainv
        dof = self.dof if dof is None else dof
        sigma2 = self.sigma2 if sigma2 is None else sigma2
        move = self.move if move is None else move
        se = self.se(Ainv, sigma2)
        q = stats.t.ppf(1 - (1 - np.array(self.levels)) / 2, max(dof, 1))
        v = np.maximum(self.s0 ** 2 - se ** 2, 0) + move
        sd = np.sqrt(np.maximum(v, 1e-300))
        moving = stats.norm.cdf((self.g - q * se) / sd) + stats.norm.cdf((-self.g - q * se) / sd)
        return np.where(v > 1e-12 * np.maximum(self.s0 ** 2, 1e-300), moving, (np.abs(self.g) >= q * se) * 1.0)

    def after(self, new: bool, key: tuple, x: np.ndarray) -> dict:
        """The batch state after adding a candidate: a new configuration (design row x), or
        one more seed of the configuration `key` of the surface."""
        if new:
            Ax = self.Ainv @ x
            return {"Ainv": self.Ainv - np.outer(Ax, Ax) / (1 + x @ Ax), "dof": self.dof + 1,
                    "sigma2": self.sigma2, "move": self.move}
        i = self.row[key]
        x, n = self.X[i], self.n_seeds[i]
        Ax = self.Ainv @ x
        shrink = self.seed_var * (1 / n - 1 / (n + 1)) * max(1 - float(x @ Ax), 0) / max(self.dof, 1)
        move = self.move + (self.J @ Ax) ** 2 * self.seed_var / (n * (n + 1))
        return {"Ainv": self.Ainv, "dof": self.dof, "sigma2": max(self.sigma2 - shrink, 1e-12), "move": move}

    def take(self, new: bool, key: tuple, x: np.ndarray, state: dict) -> None:
        self.Ainv, self.dof, self.sigma2, self.move = state["Ainv"], state["dof"], state["sigma2"], state["move"]
        if new:
            self.row[key] = len(self.X)
            self.X = np.vstack([self.X, x])
            self.n_seeds = np.append(self.n_seeds, 1.0)
        else:
            self.n_seeds[self.row[key]] += 1


def _seed_var(regime: pd.DataFrame, surface: Surface) -> float:
    """Seed noise of one run's log error: pooled over the regime's repeated seeds, else all of
    the residual variance (then a seed's value is an upper bound). The surface's variance is
    never below the pooled seeds' share (depth_width.seed_floor), so planned seeds never plan it
    below zero (they did when it could be: P(settled) near 1 for rules that then did not settle)."""
    pooled = seed_var_log(regime)
    return pooled if pooled else float(surface.sigma2 * regime["n_seeds"].mean())


def _keys(frame: pd.DataFrame) -> list[tuple]:
    return [tuple(r) for r in frame[AXES].to_numpy()]


def own_plan(regime: pd.DataFrame, rules: list, settle_level: float) -> Plan:
    s = Surface(regime)
    return Plan(s, s.features(regime), rules, settle_level, _seed_var(regime, s), regime["n_seeds"].to_numpy(),
                _keys(regime))


def prior_plan(cheaper: pd.DataFrame, design_rows: pd.DataFrame, rules: list, settle_level: float) -> Plan:
    """A regime not fitted yet, planned on a cheaper regime's surface as if its initial design
    (and what it already has) were trained: where the cheaper regime says information is."""
    s = Surface(cheaper)
    return Plan(s, s.features(design_rows), rules, settle_level, _seed_var(cheaper, s), np.ones(len(design_rows)),
                _keys(design_rows))


def sequence(plan: Plan, pool: pd.DataFrame, grid_cost: float, budget_left: float) -> list[dict]:
    """The candidates (rows with `new`, `compute`, `cost` and the axes) in the order a greedy
    design takes them: each step the one that most reduces the open rules' variances
    (relative, summed) per unit of cost, the plan updated as if it were trained; with the
    expected rules settled after each prefix. Each candidate's design row is computed once."""
    base = plan.p_settled()
    rows = list(zip([c for _, c in pool.iterrows()], plan.s.features(pool) if len(pool) else [], _keys(pool)))
    out, spent, cost = [], 0.0, 0.0
    while rows:
        se = plan.se(plan.Ainv, plan.sigma2)
        best = None
        for j, (c, x, key) in enumerate(rows):
            if cost + c["cost"] > budget_left:
                continue
            state = plan.after(c["new"], key, x)
            reduction = float(np.sum(1 - (plan.se(state["Ainv"], state["sigma2"]) / np.maximum(se, 1e-300)) ** 2))
            if best is None or reduction / c["cost"] > best[0]:
                best = (reduction / c["cost"], j, state)
        if best is None:
            break
        _, j, state = best
        c, x, key = rows.pop(j)
        plan.take(c["new"], key, x, state)
        spent += c["compute"]
        p = plan.p_settled()
        k = int(np.argmax(1 - plan.se(plan.Ainv, plan.sigma2) / np.maximum(se, 1e-300)))
        out.append({"candidate": c, "compute": spent, "cost": (cost := cost + c["cost"]) / grid_cost,
                    "gain": float((p - base).sum()), "helps": plan.rules[k].name, "p": p})
    return out
