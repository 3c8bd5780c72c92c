"""The report's figures, each a function of the configuration table (and rules) that saves
one PNG and returns its path."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis import rules  # noqa: E402

AXIS_COLOURS = {"base": "black", "depth": "tab:blue", "width": "tab:orange", "resolution": "tab:green",
                "other": "lightgrey"}


def _axis_of(regime: pd.DataFrame) -> pd.Series:
    label = pd.Series("other", index=regime.index)
    for axis in rules.AXES:
        label[rules.axis_line(regime, axis).index] = axis
    base = np.logical_and.reduce([regime[a] == regime[a].min() for a in rules.AXES])
    label[base] = "base"
    return label


def _panels(configs: pd.DataFrame, rows: int = 1):
    regimes = sorted(configs["epochs"].unique())
    fig, axes = plt.subplots(rows, len(regimes), figsize=(5 * len(regimes), 4 * rows), squeeze=False)
    return fig, axes, regimes


def error_vs_cost(configs: pd.DataFrame, out: Path) -> Path:
    fig, axes, regimes = _panels(configs, rows=2)
    for j, e in enumerate(regimes):
        regime = configs[configs["epochs"] == e]
        axis = _axis_of(regime)
        for i, cost in enumerate(("flops", "latency_ms")):
            ax = axes[i][j]
            for name, colour in AXIS_COLOURS.items():
                part = regime[axis == name]
                ax.scatter(part[cost], part["error"], c=colour, s=18, label=name if i == 0 else None)
            front = rules.frontier(regime, cost)
            ax.step(front[cost], front["error"], where="post", c="crimson", lw=1, label="Pareto front (chosen on minival)")
            ax.set(xscale="log", yscale="log", xlabel=cost, ylabel="test error", title=f"{e} epochs")
    axes[0][0].legend(fontsize=7)
    return _save(fig, out / "error_vs_flops_latency.png")


def depth_vs_width(configs: pd.DataFrame, out: Path, n_bands: int = 100) -> Path:
    fig, axes, regimes = _panels(configs)
    for j, e in enumerate(regimes):
        regime, ax = configs[configs["epochs"] == e], axes[0][j]
        for axis, colour in (("depth", "tab:blue"), ("width", "tab:orange")):
            line = rules.axis_line(regime, axis)
            ax.plot(line["compute"], line["error"], "o-", c=colour, label=f"{axis} scaling (base resolution)")
            curves = _bootstrap_lines(regime, axis, n_bands)
            if curves.size:  # none when the surface cannot be fitted or the line has no point
                lo, hi = np.nanquantile(curves, [0.05, 0.95], axis=0)
                ax.fill_between(line["compute"], lo, hi, color=colour, alpha=0.2)
        ax.set(xscale="log", yscale="log", xlabel="training compute (FLOPs)", ylabel="test error",
               title=f"{e} epochs")
        ax.legend(fontsize=7)
    return _save(fig, out / "depth_vs_width.png")


def _bootstrap_lines(regime: pd.DataFrame, axis: str, n: int) -> np.ndarray:
    """Bands: the axis line's error predicted by the regime's error surface
    (analysis.depth_width.Surface) over draws of its coefficients."""
    from analysis.depth_width import Surface

    try:
        surface = Surface(regime)
    except (ValueError, np.linalg.LinAlgError):
        return np.empty((0, 0))
    return np.exp(surface.draws(n, 0) @ surface.features(rules.axis_line(regime, axis)).T)


def resolution(configs: pd.DataFrame, decisions: dict, out: Path) -> Path:
    fig, axes, regimes = _panels(configs, rows=2)
    for j, e in enumerate(regimes):
        regime = configs[configs["epochs"] == e]
        line = rules.axis_line(regime, "resolution")
        axes[0][j].plot(line["flops"], line["error"], "o-", c="tab:green")
        axes[0][j].set(xscale="log", yscale="log", xlabel="FLOPs", ylabel="test error",
                       title=f"resolution scaling, {e} epochs")
        front, ax = rules.frontier(regime), axes[1][j]
        ax.plot(front["flops"], front["resolution"], "o", c="tab:green", label="frontier resolution")
        x = np.geomspace(front["flops"].min(), front["flops"].max(), 10)
        r0 = front["resolution"].iloc[0]
        ax.plot(x, r0 * (x / x[0]) ** rules.EFFICIENTNET_RESOLUTION_EXPONENT, "--", c="grey",
                label="EfficientNet C^0.214")
        fitted = decisions["resolution_scaling"]["by_regime"].get(int(e))
        if fitted:
            a = fitted["a_resolution"]["estimate"]
            ax.plot(x, r0 * (x / x[0]) ** a, "-", c="tab:green", label=f"fitted C^{a:.3f}")
        ax.set(xscale="log", yscale="log", xlabel="FLOPs", ylabel="resolution (px)")
        ax.legend(fontsize=7)
    return _save(fig, out / "resolution.png")


def latency(configs: pd.DataFrame, out: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, x in zip(axes, ("flops", "activations")):
        ax.scatter(configs[x], configs["latency_ms"], c=np.log(configs["depth"]), cmap="viridis", s=18)
        ax.set(xscale="log", yscale="log", xlabel=x, ylabel="latency (ms)", title=f"latency vs {x} (colour: depth)")
    return _save(fig, out / "latency.png")


def edf(configs: pd.DataFrame, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 4))
    for e, regime in configs.groupby("epochs"):
        err = np.sort(regime["error"])
        ax.step(err, np.arange(1, len(err) + 1) / len(err), where="post", label=f"{e} epochs")
    ax.set(xscale="log", xlabel="test error", ylabel="share of configurations", title="error EDF")
    ax.legend()
    return _save(fig, out / "error_edf.png")


def parity(decisions: dict, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 4))
    points = pd.DataFrame(decisions["extrapolation"]["parity"])
    if len(points):
        for e, part in points.groupby("epochs"):
            ax.scatter(part["actual"], part["predicted"], label=f"{e} epochs")
        lim = [points[["actual", "predicted"]].min().min() * 0.8, points[["actual", "predicted"]].max().max() * 1.2]
        ax.plot(lim, lim, "--", c="grey")
        ax.legend()
    ax.set(xscale="log", yscale="log", xlabel="actual error (held-out largest)",
           ylabel="predicted from smaller scales", title="extrapolation")
    return _save(fig, out / "extrapolation_parity.png")


def _save(fig, path: Path) -> Path:
    for ax in fig.axes:  # a panel whose points all failed: said, on linear axes (log ones need data)
        if not _drawn(ax):
            ax.set(xscale="linear", yscale="linear")
            ax.text(0.5, 0.5, "no finished points to draw", transform=ax.transAxes, ha="center", color="grey")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _drawn(ax) -> bool:
    """Whether a panel has any point drawn (a line or scattered points)."""
    lines = any(len(line.get_xdata()) for line in ax.get_lines())
    return lines or any(len(c.get_offsets()) for c in ax.collections if hasattr(c, "get_offsets"))


def decide_trace(trace: pd.DataFrame, out: Path) -> Path:
    """make decide's rounds (study/decide.py's trace table): P(depth better) of every rule
    (dashed: P(flip)) and the share of the full grid's cost used, round by round."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for col in [c for c in trace.columns if c.startswith("P(")]:
        rule = col.removeprefix("P(depth better) ")
        a.plot(trace["round"], trace[col], marker="o", ls="--" if rule == "flip" else "-",
               label="P(flip)" if rule == "flip" else rule)
    a.axhline(0.5, color="grey", lw=0.5)
    a.set(xlabel="round", ylabel="P(depth better); dashed: P(flip)", ylim=(-0.02, 1.02),
          title="the decisions, round by round")
    a.legend(fontsize=6)
    b.plot(trace["round"], trace["spent_share"], marker="o")
    b.set(xlabel="round", ylabel="cost used / full grid's", title="spent: training FLOPs + each run's overhead")
    fig.tight_layout()
    path = out / "trace.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
