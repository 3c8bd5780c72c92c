"""Load a sweep's run record from MLflow (any tracking URI) into tidy pandas tables.

Reads only the run record documented in README.md: params, final metrics and tags of the
child runs under the sweep's parent run. Nothing here imports the training package.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

FINAL_METRICS = ("top1", "top5", "error", "minival/top1", "minival/top5", "flops", "params",
                 "activations", "latency_ms", "latency_batch", "train_step_ms", "train_img_per_s",
                 "peak_mem_mb", "train_time_s", "step_latency_ms", "step_latency_min_ms", "step_latency_max_ms",
                 "step_batch", "step_img_per_s", "step_peak_mem_mb")
LATENCY_ALONE = "the training step at batch <= 128, measured alone (step_latency_ms)"
LATENCY_IN_JOB = ("inference at batch 32, measured in each job beside the sweep's other jobs (latency_ms); "
                  "make measure SWEEP={sweep} measures the training step alone")


@dataclass(frozen=True)
class Runs:
    table: pd.DataFrame           # one row per run key (point and seed): its latest FINISHED run, typed
                                  # columns; `tuned`: tuned by Optuna
    excluded: dict[str, int]      # why runs were left out -> how many: their status (FAILED, RUNNING,
                                  # KILLED), or `rerun` (an older FINISHED run of a run key rerun later)
    latency: str = ""             # what the `latency_ms` column holds (LATENCY_ALONE or LATENCY_IN_JOB)


def find_experiment(client, sweep: str):
    """The sweep's experiment: the one tagged `sweep=<name>`; a store no version since has
    opened keeps it under the bare sweep name. None when there is none."""
    tagged = client.search_experiments(filter_string=f"tags.sweep = '{sweep}'", max_results=1)
    return tagged[0] if tagged else client.get_experiment_by_name(sweep)


def load_runs(sweep: str, tracking_uri: str) -> Runs:
    """The latest FINISHED child run of every run key of `sweep`. A forced rerun (make point,
    force=true) repeats a seed, it is not another one: only the latest counts, and the older
    ones are counted in `excluded['rerun']`, as runs of other statuses are under theirs.
    Params under tune.* describe how a point was tuned, not the point, and are left out."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = find_experiment(client, sweep)
    if experiment is None:
        raise LookupError(f"no sweep named {sweep!r} in {tracking_uri}")
    runs = client.search_runs([experiment.experiment_id], "tags.point_key != ''", max_results=50000)
    excluded: dict[str, int] = {}
    latest = {}
    for run in runs:
        if run.info.status != "FINISHED":
            excluded[run.info.status] = excluded.get(run.info.status, 0) + 1
            continue
        key = run.data.tags.get("run_key", run.info.run_id)
        if key in latest:
            excluded["rerun"] = excluded.get("rerun", 0) + 1
        if key not in latest or run.info.start_time > latest[key].info.start_time:
            latest[key] = run
    table = _typed(pd.DataFrame([_row(run) for run in latest.values()]))
    alone = "step_latency_ms" in table and table["step_latency_ms"].notna().all()
    if alone:  # the paper's latency, for every run: what every rule, plot and budget reads
        table["latency_ms"], table["latency_batch"] = table["step_latency_ms"], table["step_batch"]
    return Runs(table, excluded, LATENCY_ALONE if alone else LATENCY_IN_JOB.format(sweep=sweep))


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
    """One row per configuration (every param but the seed and point key): the mean of each
    final metric, the number of seeds, and the seed variance of `metric` within it, plus
    `pooled_var`: the seed variance pooled over every configuration with 2+ seeds."""
    metrics = [m for m in FINAL_METRICS if m in table.columns]
    keys = [c for c in table.columns if c not in (*metrics, "run_id", "seed", "point_key")]
    grouped = table.groupby(keys, dropna=False)
    out = grouped[metrics].mean()
    out["n_seeds"] = grouped.size()
    out[f"{metric}_var"] = grouped[metric].var(ddof=1)
    dof = (out["n_seeds"] - 1).clip(lower=0)
    pooled = (out[f"{metric}_var"].fillna(0) * dof).sum() / dof.sum() if dof.sum() else float("nan")
    out["pooled_var"] = pooled
    return out.reset_index()
