"""The saved view a sweep's experiment carries in MLflow's UI (the link that opens it is the
contract's: study.record.contract.runs_link).

MLflow 3's runs page keeps its state (columns, grouping, chart cards) in the browser; a view
shared from it is an experiment tag `mlflow.sharedViewState.<key>` holding that state as JSON,
opened by `#/experiments/<id>/runs?viewStateShareKey=<key>`. There is no Python API for it: the
shape below is read from the UI's own source (mlflow/server/js/build of the pinned MLflow) and
pinned by tests/test_view.py against that bundle. The link also keeps `workflowType`, so a UI
that stops reading the view still opens the runs table.

The view (key VIEW_KEY, the only view tag this module writes: a user's own views have keys of
their own and are never touched): the points grouped by epoch budget, every group open;
columns top1, minival top1, FLOPs, params, step latency, peak memory, train time and inference
latency, the four grid axes, a failed point's reason (and, for make decide, its proposal
round); charts top1 against log10 FLOPs, a contour of width x depth -> top1, parallel
coordinates over the four axes and top1, and the top1 training curve per epoch. Each point run
is coloured by its epoch budget (`mlflow.runColor`).

The scatter card has no log axis, so a point run carries `log10_flops` (derived from `flops`);
`install` adds it, and the colour, to runs that lack them, so a store written by an earlier
version gets the whole view the first time a sweep or `make ui` opens it.
"""
from __future__ import annotations

import json
import math

from study.record.contract import VIEW_KEY

VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
COLOR_TAG = "mlflow.runColor"
ROUND_TAG = "decide_round"  # the make decide round that proposed a point run
LOG_FLOPS = "log10_flops"
AXES = ("model.width", "model.depth", "data.resolution", "recipe.epochs")
METRICS = ("top1", "minival/top1", "flops", "params", "train_step_ms", "peak_mem_mb", "train_time_s", "latency_ms")
EPOCH_CURVE = "val/top1"  # logged each epoch (step = epoch)
# MLflow's own run palette, one colour per epoch budget in increasing order.
PALETTE = ("#077A9D", "#FFAB00", "#00A972", "#FF3621", "#8BCAE7", "#AB4057", "#99DDB4", "#FCA4A1", "#919191", "#BF7080")
SECTION = "scaling-study-section"


def _column(kind: str, name: str) -> str:
    """A runs-table column as the UI names it: `metrics.\\`top1\\``."""
    return f"{kind}.`{name}`"


def columns(decide: bool = False) -> list[str]:
    return [*(_column("metrics", m) for m in METRICS), *(_column("params", a) for a in AXES),
            _column("tags", "status_reason"), *([_column("tags", ROUND_TAG)] if decide else [])]


def _card(uuid: str, kind: str, title: str, **fields) -> dict:
    return {"uuid": uuid, "type": kind, "displayName": title, "metricSectionId": SECTION, "deleted": False,
            "isGenerated": False, "runsCountToCompare": 1000, **fields}


def charts() -> list[dict]:
    axis = lambda key, kind: {"key": key, "type": kind}  # noqa: E731
    return [
        _card("scaling-study-flops", "SCATTER", "top1 vs log10 FLOPs (colour: epoch budget)",
              xaxis=axis(LOG_FLOPS, "METRIC"), yaxis=axis("top1", "METRIC")),
        _card("scaling-study-contour", "CONTOUR", "width x depth -> top1",
              xaxis=axis("model.width", "PARAM"), yaxis=axis("model.depth", "PARAM"), zaxis=axis("top1", "METRIC")),
        _card("scaling-study-parallel", "PARALLEL", "grid axes -> top1",
              selectedParams=list(AXES), selectedMetrics=["top1"], showAllRuns=True),
        _card("scaling-study-curve", "LINE", "top1 per epoch (validation)", metricKey=EPOCH_CURVE,
              selectedMetricKeys=[EPOCH_CURVE], xAxisKey="step", xAxisScaleType="linear", scaleType="linear",
              lineSmoothness=0, useGlobalXaxisKey=False, useGlobalLineSmoothing=False, yAxisKey="metric",
              yAxisExpressions=[], ignoreOutliers=False, displayPoints=True, selectedXAxisMetricKey="",
              range={"xMin": None, "xMax": None, "yMin": None, "yMax": None}),
    ]


def state(decide: bool = False) -> dict:
    """The runs page's state the view opens on: search facets and UI state, as MLflow's UI
    stores a shared view."""
    return {
        "searchFilter": "", "orderByKey": "attributes.start_time", "orderByAsc": True, "startTime": "ALL",
        "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
        "selectedColumns": columns(decide), "columnOrder": columns(decide),
        "columnWidths": {c: 100 for c in columns(decide)}, "runsHiddenMode": "SHOW_ALL",
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "param", "groupByData": "recipe.epochs"}]},
        "useGroupedValuesInCharts": False, "hideEmptyCharts": True, "runListHidden": False, "viewMaximized": False,
        "compareRunCharts": charts(), "isAccordionReordered": True,  # our section first; MLflow's own after it
        "compareRunSections": [{"uuid": SECTION, "name": "Scaling study", "display": True, "isReordered": False,
                                "deleted": False, "isGenerated": False}],
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }


def install(client, experiment_id: str, decide: bool | None = None) -> int:
    """Write the study's view on the experiment (only when it differs from what is there) and
    give its point runs `log10_flops` and their epoch budget's colour where they lack them.
    `decide` adds the proposal-round column; None: when any run carries a round. Returns how
    many runs were completed."""
    runs = client.search_runs([experiment_id], "tags.point_key != ''", max_results=50000)
    if decide is None:
        decide = any(ROUND_TAG in r.data.tags for r in runs)
    value = json.dumps(state(decide), sort_keys=True)
    if client.get_experiment(experiment_id).tags.get(VIEW_TAG) != value:
        client.set_experiment_tag(experiment_id, VIEW_TAG, value)
    return sum(_complete(client, run, _colors(runs)) for run in runs)


def _colors(runs) -> dict[str, str]:
    """Epoch budget (as recorded) -> its colour, in increasing order of budget."""
    budgets = {r.data.params.get("recipe.epochs") for r in runs} - {None}
    ordered = sorted(budgets, key=lambda e: (_number(e), e))
    return {e: PALETTE[i % len(PALETTE)] for i, e in enumerate(ordered)}


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.inf


def _complete(client, run, colors: dict[str, str]) -> bool:
    from mlflow.entities import Metric, RunTag

    metrics, tags = [], []
    flops = run.data.metrics.get("flops")
    if flops and flops > 0 and LOG_FLOPS not in run.data.metrics:
        metrics.append(Metric(LOG_FLOPS, math.log10(flops), run.info.end_time or run.info.start_time, 0))
    color = colors.get(run.data.params.get("recipe.epochs"))
    if color and COLOR_TAG not in run.data.tags:  # a colour the user picked stays
        tags.append(RunTag(COLOR_TAG, color))
    if metrics or tags:
        client.log_batch(run.info.run_id, metrics=metrics, tags=tags)
    return bool(metrics or tags)


def tag_round(client, experiment_id: str, points: set[tuple], round_number: int) -> int:
    """Tag the point runs of `points` ((width, depth, resolution, epochs, seed)) that carry no
    round yet with `round_number`; returns how many."""
    tagged = 0
    for run in client.search_runs([experiment_id], "tags.point_key != ''", max_results=50000):
        p = run.data.params
        try:
            point = (float(p["model.width"]), int(p["model.depth"]), int(p["data.resolution"]),
                     int(p["recipe.epochs"]), int(p["seed"]))
        except (KeyError, ValueError):
            continue
        if point in points and ROUND_TAG not in run.data.tags:
            client.set_tag(run.info.run_id, ROUND_TAG, str(round_number))
            tagged += 1
    return tagged
