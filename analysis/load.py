"""Load a sweep's run record from MLflow (any tracking URI) into tidy pandas tables.

Reads only the run record documented in docs/run-record.md: params, final metrics and tags of the
child runs under the sweep's parent run, and the study's manifest (analysis.manifest): only the
points of the grids the sweep declared are the study's. Of study/ it imports only the contract
(study.record.contract), never the training side.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pandas as pd

from analysis import manifest as manifests
from study.record.contract import ALONE_METRICS, AXIS_PARAMS, FINAL_METRICS, find_experiment

LATENCY_ALONE = "the training step at batch <= 128, measured alone on {machine} (step_latency_ms)"
LATENCY_IN_JOB = ("inference at batch 32, measured in each job beside the sweep's other jobs (latency_ms); "
                  "make measure SWEEP={sweep} measures the training step alone")


@dataclass(frozen=True)
class Runs:
    table: pd.DataFrame           # one row per run key (point and seed): its latest FINISHED run, typed
                                  # columns; `tuned`: tuned by Optuna
    excluded: dict[str, int]      # why runs were left out -> how many: their status (FAILED, RUNNING,
                                  # KILLED), or `rerun` (an older FINISHED run of a run key rerun later)
    latency: str = ""             # what the `latency_ms` column holds (LATENCY_ALONE or LATENCY_IN_JOB)
    missing: tuple = ()           # run keys with no FINISHED run: the latest run of each (`missing_point`)
    outside: tuple = ()           # runs of the experiment outside the study's manifest, left out of every
                                  # fit: {name, status, why} (`outside_run`); empty with include_outside
    scope: str = ""               # which runs are the study's: its declared grids, or a warning that the
                                  # store predates manifests, or that runs outside were included on request
    sweep_file: str = ""          # the sweep file that declared the study (its manifest), when one did


def missing_point(run) -> dict:
    """A point that did not finish, as the report names it: its name, grid axes, status and reason."""
    p, tags = run.data.params, run.data.tags
    axes = {k: pd.to_numeric(p.get(f"{group}.{k}"), errors="coerce") for group, k in AXIS_PARAMS}
    return {"name": tags.get("mlflow.runName", run.info.run_id[:8]), **axes, "status": run.info.status,
            "reason": tags.get("status_reason", "") or ("still running or killed without a reason"
                                                        if run.info.status == "RUNNING" else run.info.status)}


def load_runs(sweep: str, tracking_uri: str, measured_on: str | None = None, include_outside: bool = False) -> Runs:
    """The latest FINISHED child run of every run key of `sweep` inside its manifest (the grids
    it declared; every run when the store predates manifests, or with `include_outside`; the
    others are listed in `outside`). A forced rerun (make point,
    force=true) repeats a seed, it is not another one: only the latest counts, and the older
    ones are counted in `excluded['rerun']`, as runs of other statuses are under theirs.
    Params under tune.* describe how a point was tuned, not the point, and are left out.
    The latency is the training step measured alone on `measured_on` (a `measure.machine` id),
    by default on the machine that measured every run (see `machine`); the in-job inference
    latency when no machine did."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = find_experiment(client, sweep)
    if experiment is None:
        raise LookupError(f"no sweep named {sweep!r} in {tracking_uri}")
    runs = client.search_runs([experiment.experiment_id], "tags.point_key != ''", max_results=50000)
    runs, outside, scope, sweep_file = _in_study(client, experiment.experiment_id, sweep, runs, include_outside)
    excluded: dict[str, int] = {}
    latest, unfinished = {}, {}  # run key -> its latest FINISHED run; its latest run of another status
    for run in runs:
        finished, key = run.info.status == "FINISHED", run.data.tags.get("run_key", run.info.run_id)
        if not finished or key in latest:
            why = run.info.status if not finished else "rerun"
            excluded[why] = excluded.get(why, 0) + 1
        kept = latest if finished else unfinished
        if key not in kept or run.info.start_time > kept[key].info.start_time:
            kept[key] = run
    chosen = list(latest.values())
    missing = tuple(missing_point(run) for key, run in sorted(unfinished.items(), key=lambda kv: kv[1].info.start_time)
                    if key not in latest)
    if not chosen:
        return Runs(pd.DataFrame(), excluded, LATENCY_IN_JOB.format(sweep=sweep), missing, outside, scope, sweep_file)
    table = _typed(pd.DataFrame([_row(run) for run in chosen]))
    found = [measurements(run) for run in chosen]
    name, others = machine(found, measured_on)
    if name is None:  # no machine measured every run: no mixing of machines' figures
        table = table.drop(columns=[m for m in ALONE_METRICS if m in table])
        return Runs(table, excluded, LATENCY_IN_JOB.format(sweep=sweep), missing, outside, scope, sweep_file)
    for metric in ALONE_METRICS:  # the chosen machine's figures, whatever was measured last
        table[metric] = [m[name].get(metric, float("nan")) for m in found]
    # the paper's latency, for every run: what every rule, plot and budget reads
    table["latency_ms"], table["latency_batch"] = table["step_latency_ms"], table["step_batch"]
    also = f"; also measured on {', '.join(others)} (--measured-on picks one)" if others else ""
    return Runs(table, excluded, LATENCY_ALONE.format(machine=name) + also, missing, outside, scope, sweep_file)


def _in_study(client, experiment_id: str, sweep: str, runs: list, include_outside: bool) -> tuple[list, tuple, str, str]:
    """(the runs analysed, the runs outside the study with why, which runs are the study's, the
    sweep file that declared them)."""
    parents = client.search_runs([experiment_id], "tags.role = 'parent'", max_results=1,
                                 order_by=["attributes.start_time ASC"])
    found = manifests.read(client, parents[0].info.run_id) if parents else None
    if found is None:
        return runs, (), manifests.BEFORE_MANIFESTS.format(sweep=sweep), ""
    inside = [r for r in runs if found.holds(r.data.tags.get("point_key"))]
    others = tuple(outside_run(r, found) for r in sorted(runs, key=lambda r: r.info.start_time)
                   if not found.holds(r.data.tags.get("point_key")))
    grids = f"{found.grids} declared grid" + ("s" if found.grids > 1 else "")
    if include_outside:
        return runs, (), (f"every run of the experiment, {len(others)} outside the study's {grids} included on request "
                          "(--include-outside)"), found.sweep_file
    return inside, others, f"the {found.count} points of the sweep's {grids} (its manifest)", found.sweep_file


def outside_run(run, found: manifests.Manifest) -> dict:
    """A run outside the study, as the report lists it: its name, axes, status and why."""
    p = run.data.params
    axes = {k: pd.to_numeric(p.get(f"{group}.{k}"), errors="coerce") for group, k in AXIS_PARAMS}
    return {"name": run.data.tags.get("mlflow.runName", run.info.run_id[:8]), **axes, "status": run.info.status,
            "why": manifests.why_outside(p, run.data.tags, found)}


def measurements(run) -> dict[str, dict[str, float]]:
    """A run's measurements alone (study.measure.alone), by machine: `alone/<machine>/<metric>`. A run
    measured before machines were named has only its latest, under its `measure.machine` tag
    or `unnamed`."""
    out: dict[str, dict[str, float]] = {}
    for key, value in run.data.metrics.items():
        if key.startswith("alone/") and key.count("/") == 2:
            _, name, metric = key.split("/")
            out.setdefault(name, {})[metric] = value
    if not out and "step_latency_ms" in run.data.metrics:
        out[run.data.tags.get("measure.machine", "unnamed")] = {
            k: run.data.metrics[k] for k in ALONE_METRICS if k in run.data.metrics}
    return out


def machine(found: list[dict[str, dict]], measured_on: str | None = None) -> tuple[str | None, list[str]]:
    """The machine whose measurements analysis reads, and the others that measured every run:
    `measured_on` when given (LookupError unless it measured every run); else the one machine
    that measured every run, the first by name when several did; None when none did (a sweep
    measured in parts on different machines is not mixed)."""
    counts = Counter(name for m in found for name in m)
    everywhere = sorted(name for name, n in counts.items() if n == len(found) and found)
    if measured_on is not None:
        if measured_on not in everywhere:
            seen = ", ".join(f"{name} ({n} of {len(found)} runs)" for name, n in sorted(counts.items()))
            raise LookupError(f"measured_on={measured_on!r}: {counts.get(measured_on, 0)} of {len(found)} runs were "
                              f"measured alone there; measured on: {seen or 'no machine'} "
                              "(make measure SWEEP=... FORCE=1 measures every run on this machine)")
        return measured_on, [n for n in everywhere if n != measured_on]
    return (everywhere[0], everywhere[1:]) if everywhere else (None, [])


def _row(run) -> dict:
    metrics = {k: run.data.metrics[k] for k in FINAL_METRICS if k in run.data.metrics}
    params = {k: v for k, v in run.data.params.items() if not k.startswith("tune.")}
    return {"run_id": run.info.run_id, "tuned": run.data.tags.get("tuned") == "true", **params, **metrics}


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    """MLflow stores params as strings: numbers become numbers, True/False booleans."""
    for col in df.columns:
        values = df[col]
        if values.isin(["True", "False"]).all():
            df[col] = values == "True"
            continue
        numeric = pd.to_numeric(values, errors="coerce")
        if numeric.notna().sum() == values.notna().sum() and values.notna().any():
            df[col] = numeric
    return df


def by_configuration(table: pd.DataFrame, metric: str = "error") -> pd.DataFrame:
    """One row per configuration (every param but the seed, the replicate and the point key):
    the mean of each final metric, the number of seeds (runs: a replicate's runs are more seeds
    of its configurations), and the seed variance of `metric` within it, plus `pooled_var`: the
    seed variance pooled over every configuration with 2+ seeds."""
    metrics = [m for m in FINAL_METRICS if m in table.columns]
    keys = [c for c in table.columns if c not in (*metrics, "run_id", "seed", "replicate", "point_key")]
    grouped = table.groupby(keys, dropna=False)
    out = grouped[metrics].mean()
    out["n_seeds"] = grouped.size()
    out[f"{metric}_var"] = grouped[metric].var(ddof=1)
    dof = (out["n_seeds"] - 1).clip(lower=0)
    pooled = (out[f"{metric}_var"].fillna(0) * dof).sum() / dof.sum() if dof.sum() else float("nan")
    out["pooled_var"] = pooled
    return out.reset_index()
