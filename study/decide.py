"""An adaptive study: train only the grid points that settle the open scaling questions.

    make decide SWEEP=default BUDGET=1x            # or BUDGET=3e13 (training FLOPs), BUDGET=20m (wall)
    python -m study.decide --sweep default --budget 1x --jobs 4 [hydra overrides ...]

Its candidate set, the declared grid, is recorded as the study's manifest (study.sweep.manifest).
Rounds: load what the sweep has recorded, ask analysis.adaptive.propose what to train next
(the analysis proposes, this module trains: the arrow goes one way), train that batch as a
Hydra multirun of the sweep itself (same trainer, run record, parent run, skip/resume,
launchers), and repeat until every rule asked about is decided, the budget is spent, or no
candidate is worth its cost. Then the same report as `make analyze`, with the trace of rounds
(reports/<sweep>/decide/: trace.csv, trace.png) logged on the sweep's parent run.

A batch is trained by `python -m study.run --multirun` (run in this process) on the sweep
file with its declared grid cleared (`hydra.sweeper.params=null`) and one option of the config
group `decide_point` per proposed point; the options are written to
outputs/decide/<sweep>/decide_point/ and added to Hydra's search path. Killed mid-round, a rerun proposes from what was recorded:
finished points are skipped, an interrupted one resumes from its checkpoint.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from analysis import adaptive
from analysis.fit import training_compute
from analysis.load import load_runs
from analysis.rules import COLUMNS
from study.record import view
from study.settings import config, grid
from study.settings.config import CODE_ROOT, ConfigError
from study.settings.hardware import usable_cores
from study.sweep.callback import axes, browse_hint, description
from study.sweep import manifest
from study.sweep.cluster import check_store_for_launcher
from study.sweep.compose import compose_sweep, validate_grid

AXES = {k: COLUMNS[k] for k in ("recipe.epochs", "model.depth", "model.width", "data.resolution")}  # -> analysis names
GROUP = "decide_point"


# --- the declared grid -------------------------------------------------------------------

def declared_grid(cfg) -> pd.DataFrame:
    """The sweep's declared configurations (epochs, depth, width, resolution): its grid must
    sweep exactly the four axes."""
    params = dict(cfg.hydra.sweeper.params or {})
    if set(params) != set(AXES):
        raise ConfigError(f"hydra.sweeper.params of sweep {cfg.sweep!r} sweeps {sorted(params)}: make decide needs "
                          f"a grid over exactly {sorted(AXES)} (one value each is allowed)")
    rows = []
    for job in grid.expand(params, []):
        values = dict(o.split("=", 1) for o in job)
        rows.append({AXES[k]: float(v) if k == "model.width" else int(v) for k, v in values.items()})
    return pd.DataFrame(rows).drop_duplicates().reset_index(drop=True)


def flops_of(declared: pd.DataFrame, study: config.StudyConfig, num_classes: int, in_chans: int) -> pd.Series:
    """Forward FLOPs of one image of every configuration, counted on the meta device (no
    weights, no compute): what each point will record as `flops`."""
    from study.measure.costs import configuration_complexity

    m = study.model
    return pd.Series([configuration_complexity(replace(m, depth=int(d), width=float(w)), int(r), num_classes,
                                               in_chans)["flops"]
                      for d, w, r in declared[["depth", "width", "resolution"]].itertuples(index=False)],
                     index=declared.index, dtype=float)


def data_shape(study: config.StudyConfig) -> tuple[int, int, int]:
    """(training images, classes, channels) of the sweep's data."""
    from study.data import sets

    ds = sets.prepare(study.data)
    return len(ds.train), ds.num_classes, ds.in_chans


# --- budgets -----------------------------------------------------------------------------

def parse_budget(text: str) -> tuple[str, float]:
    """('grids', multiple of the full grid's cost), ('flops', training FLOPs) or ('seconds',
    wall time) from '1x', '3e13', '90s', '20m' or '2h'."""
    m = re.fullmatch(r"\s*([0-9.]+(?:e[+-]?[0-9]+)?)\s*(x|s|m|h)?\s*", text.lower())
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"BUDGET={text!r}: allowed are a multiple of the full grid's training compute (1x, "
                          "0.5x), training FLOPs (3e13) or wall time (90s, 20m, 2h), greater than 0")
    value, unit = float(m.group(1)), m.group(2)
    if unit == "x":
        return "grids", value
    if unit in ("s", "m", "h"):
        return "seconds", value * {"s": 1, "m": 60, "h": 3600}[unit]
    return "flops", value


# --- training a batch through the sweep machinery -----------------------------------------

def _option_name(row) -> str:
    text = f"w{row['width']:g}_d{int(row['depth'])}_r{int(row['resolution'])}_e{int(row['epochs'])}_s{int(row['seed'])}"
    return text.replace(".", "p")


def write_points(batch: pd.DataFrame, folder: Path) -> list[str]:
    """One option of the config group decide_point per proposed point (settings at the
    global package, after the sweep file's own)."""
    from omegaconf import OmegaConf

    group = folder / GROUP
    group.mkdir(parents=True, exist_ok=True)
    names = []
    for _, row in batch.iterrows():
        name = _option_name(row)
        settings: dict = {"seed": int(row["seed"]), "seeds": 1}
        for key, col in AXES.items():
            section, leaf = key.split(".")
            settings.setdefault(section, {})[leaf] = float(row[col]) if col == "width" else int(row[col])
        text = f"# @package _global_\n# written by make decide: {row['why']}\n{OmegaConf.to_yaml(settings)}"
        (group / f"{name}.yaml").write_text(text)
        names.append(name)
    return names


def round_args(sweep_file: str, names: list[str], folder: Path, jobs: int | str, overrides: list[str],
               pack: str = "auto") -> list[str]:
    """The arguments of `python -m study.run` that train a round: the sweep file with its
    declared grid cleared and the proposed points as options of decide_point; jobs `auto`: the
    packed launcher (study.sweep.packed) with `pack`."""
    if jobs == 1 or any(o.startswith("hydra/launcher=") for o in overrides):
        launch = []
    elif jobs == "auto":
        launch = ["hydra/launcher=packed", f"hydra.launcher.pack={pack}"]
    else:
        launch = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
    return ["--multirun", "--config-dir", str(CODE_ROOT / "sweeps"), "--config-name", sweep_file,
            "hydra.sweeper.params=null", f"hydra.searchpath=[file://{folder}]", f"+{GROUP}={','.join(names)}",
            "analysis.auto=false", "trainer.measure_alone=false", *launch, *overrides]  # both once, at the end


def parse_jobs(text: str, pack: str) -> int | str:
    """--jobs: a whole number >= 1, or auto (packed, with --pack checked); ConfigError naming them."""
    from study.point.packing import parse_pack

    if text.strip().lower() == "auto":
        parse_pack(pack)
        return "auto"
    if not text.strip().isdigit() or int(text) < 1:
        raise ConfigError(f"invalid settings:\n  --jobs={text!r} (JOBS): allowed are a whole number of points "
                          "trained at once (1 or more) or auto (packed: hydra/launcher=packed)")
    return int(text)


def train_round(args: list[str]) -> int:
    """`python -m study.run ARGS` in this process (the same Hydra multirun, its launcher and
    callback, without a new interpreter and its imports every round); its exit status."""
    from hydra.core.global_hydra import GlobalHydra

    from study import run as entry

    saved = sys.argv
    sys.argv = ["study.run", *args]
    try:
        entry.main()
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        sys.argv = saved
        GlobalHydra.instance().clear()


# --- the trace of rounds -----------------------------------------------------------------

class Trace:
    """Rounds so far, kept in reports/<sweep>/decide/trace.json so a rerun continues it."""

    def __init__(self, folder: Path, experiment_id: str):
        self.path = folder / "trace.json"
        saved = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.rounds = saved.get("rounds", []) if saved.get("experiment_id") == experiment_id else []
        self.experiment_id = experiment_id

    @property
    def seconds(self) -> float:
        return float(sum(r["seconds"] for r in self.rounds))

    def add(self, entry: dict) -> None:
        self.rounds.append(entry)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"experiment_id": self.experiment_id, "rounds": self.rounds}, indent=1))

    def table(self) -> pd.DataFrame:
        rows = []
        for r in self.rounds:
            row = {k: r[k] for k in ("round", "spent_share", "trained", "seconds", "stop")}
            row |= {f"P(depth better) {name}": p for name, p in r["p_depth_better"].items()}
            rows.append(row)
        return pd.DataFrame(rows)


# --- the loop ----------------------------------------------------------------------------

def round_lines(n: int, proposal: adaptive.Proposal, spent_share: float, budget_text: str) -> list[str]:
    lines = [f"round {n}: {spent_share:.1%} of the full grid's cost used (budget {budget_text})"]
    for r in proposal.rules:
        p = "-" if r.p_depth_better is None else f"{r.p_depth_better:.2f}"
        state = "settled" if r.settled else "open"
        label = "P(flip)" if r.name == "flip" else "P(depth better)"
        winner = r.winner or ("undecided" if r.name == "flip" and r.p_depth_better is not None else "not fitted yet")
        lines.append(f"  {r.name:<40} {winner:<22} {label:<15} {p:>5}  {state}")
    if proposal.stop:
        lines.append(f"  stop: {proposal.stop}")
    else:
        lines.append(f"  next: {len(proposal.batch)} runs, {proposal.batch['compute'].sum() / max(proposal.spent, 1):.0%} "
                     "of the training compute spent so far")
        for _, c in proposal.batch.iterrows():
            lines.append(f"    w={c['width']:g} d={int(c['depth'])} r={int(c['resolution'])} e={int(c['epochs'])} "
                         f"s={int(c['seed'])}: {c['why']}")
    return lines


def trace_text(trace: Trace) -> str:
    """The rounds as a table: cost used, runs trained, P(depth better) of each regime."""
    t = trace.table()
    regimes = [c for c in t.columns if c.startswith("P(") and "px" not in c and "flip" not in c]
    shown = t[["round", "spent_share", "trained", *regimes]].rename(
        columns={"spent_share": "cost used", **{c: c.replace("P(depth better) depth vs width at ", "P(depth) ")
                                                   for c in regimes}})
    return "rounds:\n" + shown.to_string(index=False, float_format=lambda v: f"{v:.2f}", na_rep="-") + \
        "".join(f"\nrounds predicted P(settled) {c['bin'][0]:.1f}-{c['bin'][1]:.1f} for {c['n']} rule(s): "
                f"mean {c['predicted']:.2f}, settled {c['settled']:.2f}" for c in settle_table(trace.rounds))


def settle_table(rounds: list[dict]) -> list[dict]:
    """What each round predicted for settling its open rules against the next round's states."""
    pairs = [p for a, b in zip(rounds, rounds[1:]) if "settled" in b
             for p in adaptive.settle_outcomes(a.get("predicted", {}), b["settled"])]
    return adaptive.settle_calibration(pairs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.decide", description=__doc__.splitlines()[0])
    p.add_argument("--sweep", default="default", help="the sweep file in sweeps/ (without .yaml)")
    p.add_argument("--budget", default="1x", help="1x (full grids), 3e13 (training FLOPs), 20m (wall time)")
    p.add_argument("--jobs", default="1", help="points trained in parallel (joblib launcher), or auto: packed "
                   "(hydra/launcher=packed: side by side a core each on CPUs, --pack per GPU)")
    p.add_argument("--pack", default="auto", help="with --jobs auto: points at once per GPU (or on the cores), or auto")
    p.add_argument("--rules", default=",".join(adaptive.RULES), help=f"which of {','.join(adaptive.RULES)} to settle")
    p.add_argument("--order", default="cost", choices=adaptive.ORDERS)
    p.add_argument("--max-rounds", type=int, default=100)
    a, overrides = p.parse_known_args(argv)
    try:
        cfg = compose_sweep(a.sweep, overrides)
        declared = declared_grid(cfg)
        # every declared point checked as the sweep callback checks a sweep's (exits 2 naming them)
        jobs = grid.expand(dict(cfg.hydra.sweeper.params), [])
        studies = validate_grid(cfg, jobs)
        first = studies[0]
        a.jobs = parse_jobs(a.jobs, a.pack)
        settings = adaptive.Settings(rules=tuple(x.strip() for x in a.rules.split(",") if x.strip()),
                                     order=a.order, jobs=usable_cores() if a.jobs == "auto" else a.jobs)
        try:
            settings.check()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        from study.record.access import check_store

        check_store_for_launcher(first.tracking.uri, cfg.hydra.launcher)
        check_store(first.tracking.uri, first.sweep)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    images, classes, chans = data_shape(first)
    declared["compute"] = training_compute(flops_of(declared, first, classes, chans), images, declared["epochs"])
    grid_compute = float(declared["compute"].sum())
    try:
        kind, budget = parse_budget(a.budget)
        for _, regime in declared.groupby("epochs"):  # can each regime ever be decided?
            adaptive.initial_design(regime.assign(trained=False))
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from study.record.tracking import mlflow_tracker

    t = first.tracking
    tracker = mlflow_tracker(t.uri, first.sweep, t.artifact_root, t.retry_s)
    tracker.describe(description(first, a.sweep, axes(jobs), len(jobs)) + " Trained adaptively: "
                     f"`make decide SWEEP={a.sweep}` trains only the points that settle its decisions.")
    manifest.record(tracker.client, tracker.parent_id, manifest.declared(studies, "decide", a.sweep))
    return run_study(a, first, declared, grid_compute, kind, budget, settings, overrides)


def run_study(a, first, declared, grid_compute, kind, budget, settings, overrides) -> int:
    """The rounds, then the report and the trace; exit status 0, or 1 when rounds keep failing."""
    from study.record.tracking import mlflow_tracker

    uri = first.tracking.uri
    tracker = mlflow_tracker(uri, first.sweep, first.tracking.artifact_root, first.tracking.retry_s)
    view.install(tracker.client, tracker.experiment_id, decide=True)
    home = Path(config.project_root())
    out = home / "reports" / first.sweep
    trace = Trace(out / "decide", tracker.experiment_id)
    folder = home / "outputs" / "decide" / first.sweep
    budget_text = {"grids": f"{budget:g}x the full grid's cost", "flops": f"{budget:.3g} FLOPs",
                   "seconds": f"{budget:.0f} s of wall time"}[kind]
    print(f"make decide: sweep '{first.sweep}', {len(declared)} declared points, full grid "
          f"{grid_compute:.3g} training FLOPs; budget {budget_text}", flush=True)
    failures = 0
    for _ in range(a.max_rounds):
        t0 = time.time()
        runs = _runs_in_grid(load_runs(first.sweep, uri).table, declared)
        # A run costs its training FLOPs plus its fixed overhead (data, build, evaluation,
        # measurement, record) in FLOPs at this machine's training speed: what its wall time buys.
        fixed = overhead_flops(tracker, runs)
        spent = adaptive.spent_compute(runs) + fixed * len(runs)
        grid_cost = grid_compute + fixed * len(declared)
        left = {"grids": budget * grid_cost - spent, "flops": budget - spent, "seconds": float("inf")}[kind]
        cands = adaptive.candidates(declared, runs, seed=first.seed)
        cands["cost"] = cands["compute"] + fixed
        proposal = adaptive.propose(runs, cands, grid_cost, left, settings)
        if not proposal.stop and kind == "seconds" and trace.seconds >= budget:
            proposal.stop = f"the budget is spent ({trace.seconds:.0f} s of wall time)"
        n = len(trace.rounds) + 1
        print("\n".join(round_lines(n, proposal, spent / grid_cost, budget_text)), flush=True)
        rc = 0
        if not proposal.stop:
            names = write_points(proposal.batch, folder)
            points = round_points(folder, proposal.batch, n, tracker.experiment_id)
            rc = train_round(round_args(a.sweep, names, folder, a.jobs, overrides, a.pack))
            failures = failures + 1 if rc else 0
            _tag_round(tracker, points, n)
        trace.add({"round": n, "spent_share": spent / grid_cost, "trained": int(len(proposal.batch)),
                   "seconds": time.time() - t0, "stop": proposal.stop or "",
                   "p_depth_better": {r.name: r.p_depth_better for r in proposal.rules},
                   "winners": {r.name: r.winner for r in proposal.rules},
                   "predicted": proposal.predicted, "settled": proposal.settled})
        if proposal.stop:
            break
        if rc and failures >= 2:
            print(f"error: the round's sweep failed twice in a row (exit {rc}); fix the failing points "
                  "(see the table above) and run make decide again", file=sys.stderr)
            return 1
    _conclude(first, tracker, trace, out, proposal.stop or f"after --max-rounds {a.max_rounds} rounds")
    return 0


def _conclude(first, tracker, trace: Trace, out: Path, stopped: str) -> None:
    """After the rounds: the measurement alone, the report, the trace, and what was decided."""
    from analysis import report

    if first.trainer.measure_alone:
        from study.measure import alone

        print(alone.after_sweep(tracker, first.trainer.device))
    uri = first.tracking.uri
    decisions = report.build(first.sweep, uri, out, 1000, 0, True)
    _log_trace(trace, out / "decide", tracker)
    print(trace_text(trace))
    print("\n".join(report.summary(decisions)))
    print(f"{len(report.all_warnings(decisions))} warnings; report in {out}/report.html; "
          f"rounds in {out}/decide/trace.csv")
    print(f"make decide stopped: {stopped}")
    print(f"browse: {browse_hint(uri, tracker.experiment_id)}")


def round_points(folder: Path, batch: pd.DataFrame, n: int, experiment_id: str) -> set[tuple]:
    """The points ((width, depth, resolution, epochs, seed)) round n proposes, with those an
    earlier try of round n proposed when it was killed (its finished points are not proposed
    again): kept in round.json until the next round starts."""
    path = folder / "round.json"
    points = {(float(c.width), int(c.depth), int(c.resolution), int(c.epochs), int(c.seed)) for c in batch.itertuples()}
    saved = json.loads(path.read_text()) if path.exists() else {}
    if saved.get("round") == n and saved.get("experiment_id") == experiment_id:
        points |= {tuple(p) for p in saved["points"]}
    path.write_text(json.dumps({"experiment_id": experiment_id, "round": n, "points": sorted(points)}))
    return points


def _tag_round(tracker, points: set[tuple], n: int) -> None:
    """The round that proposed each run, as the tag the study's view shows in a column."""
    view.tag_round(tracker.client, tracker.experiment_id, points, n)
    view.install(tracker.client, tracker.experiment_id, decide=True)


def overhead_flops(tracker, runs: pd.DataFrame) -> float:
    """A run's fixed cost (data, model build, evaluation, measurement, record), in training
    FLOPs at this machine's training speed, from the recorded runs: the median of (wall time -
    training time) times the training FLOPs per second of training over all runs; 0 before any."""
    if runs.empty or "train_time_s" not in runs:
        return 0.0
    found = tracker.client.search_runs([tracker.experiment_id], "attributes.status = 'FINISHED'", max_results=50000)
    wall = {r.info.run_id: (r.info.end_time - r.info.start_time) / 1000 for r in found if r.info.end_time}
    seconds = runs["run_id"].map(wall)
    fixed = (seconds - runs["train_time_s"]).dropna()
    rate = adaptive.spent_compute(runs) / max(float(runs["train_time_s"].sum()), 1e-9)
    return float(max(fixed.median(), 0.0) * rate) if len(fixed) else 0.0


def _runs_in_grid(table: pd.DataFrame, declared: pd.DataFrame) -> pd.DataFrame:
    """The sweep's runs at the declared configurations (a point trained by hand elsewhere in
    the same sweep is not the study's)."""
    if table.empty:
        return table
    keys = {tuple(r) for r in declared[list(AXES.values())].itertuples(index=False)}
    cols = list(AXES)
    inside = [tuple(r) in keys for r in table[cols].rename(columns=AXES).itertuples(index=False)]
    return table[inside].reset_index(drop=True)


def _log_trace(trace: Trace, folder: Path, tracker) -> None:
    from analysis import plots

    folder.mkdir(parents=True, exist_ok=True)
    trace.table().to_csv(folder / "trace.csv", index=False)
    plots.decide_trace(trace.table(), folder)
    tracker.client.log_artifacts(tracker.parent_id, str(folder), artifact_path="decide")


if __name__ == "__main__":
    sys.exit(main())
