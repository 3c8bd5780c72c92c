"""The study's saved view in MLflow's UI (study.record.view): its shape is the one the installed UI
reads (pinned against MLflow's own JavaScript bundle, so an MLflow that reads views
differently fails here, not in a user's browser), it is written on the sweep's experiment
without touching a user's views or colours, and a store written before it gets it whole."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from study.record import view
from study.record.tracking import MlflowTracker

BUNDLE = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"


@pytest.fixture(scope="module")
def ui_source() -> str:
    files = sorted(BUNDLE.glob("*.js"))
    if not files:
        pytest.skip(f"MLflow's UI bundle is not installed at {BUNDLE}")
    return "\n".join(f.read_text(errors="replace") for f in files)


def _array(source: str, first: str, member: str) -> list[str]:
    """The bundle's list of names that starts with `first` and holds `member`."""
    for found in re.findall(r'\[("' + re.escape(first) + r'"(?:,"[A-Za-z]+")*)\]', source):
        if f'"{member}"' in found:
            return json.loads(f"[{found}]")
    raise AssertionError(f"MLflow's UI no longer lists its shared view state as [{first!r}, ..., {member!r}, ...]")


def test_the_view_has_the_shape_the_installed_ui_reads(ui_source):
    assert '"viewStateShareKey"' in ui_source and '"mlflow.sharedViewState."' in ui_source
    facets = _array(ui_source, "searchFilter", "orderByKey")
    ui_state = _array(ui_source, "selectedColumns", "compareRunCharts")
    omitted = re.search(r"\[" + re.escape(",".join(json.dumps(k) for k in ui_state)) + r'\],\w+=\[([^\]]*)\]',
                        ui_source)
    assert omitted, "MLflow's UI no longer names the view state it leaves out of a shared view"
    shared = set(facets) | (set(ui_state) - set(json.loads(f"[{omitted.group(1)}]")))
    state = view.state(decide=True)
    assert set(state) <= shared, f"not read from a shared view: {sorted(set(state) - shared)}"
    assert {"selectedColumns", "groupBy", "compareRunCharts", "compareRunSections"} <= set(state)


def _card_fields(source: str) -> dict[str, set[str]]:
    """Each chart card type's fields, from the UI's card classes."""
    fields = {}
    for kind, body in re.findall(r"this\.type=\w+\.(\w+),((?:this\.\w+=[^;{}]*(?:\{[^{}]*\})?[^;{}]*,?)*)\}\}",
                                 source):
        fields.setdefault(kind, set()).update(re.findall(r"this\.(\w+)=", body))
    return fields


def test_each_chart_card_carries_the_fields_of_its_type_in_the_installed_ui(ui_source):
    known = _card_fields(ui_source)
    base = {"uuid", "type", "displayName", "metricSectionId", "deleted", "isGenerated", "runsCountToCompare"}
    for card in view.charts():
        assert card["type"] in known, f"MLflow's UI has no {card['type']} chart card"
        extra = set(card) - base - known[card["type"]]
        assert not extra, f"{card['type']} cards have no fields {sorted(extra)} in MLflow's UI"
    assert {c["type"] for c in view.charts()} == {"SCATTER", "CONTOUR", "PARALLEL", "LINE"}


def test_the_view_shows_the_study_columns_and_charts():
    state = view.state()
    assert state["selectedColumns"][:3] == ["metrics.`top1`", "metrics.`minival/top1`", "metrics.`flops`"]
    for column in ("metrics.`train_step_ms`", "metrics.`peak_mem_mb`", "metrics.`train_time_s`",
                   "params.`model.width`", "params.`model.depth`", "params.`data.resolution`",
                   "params.`recipe.epochs`", "tags.`status_reason`"):
        assert column in state["selectedColumns"]
    assert "tags.`decide_round`" not in state["selectedColumns"]
    assert "tags.`decide_round`" in view.state(decide=True)["selectedColumns"]
    assert state["groupBy"]["groupByKeys"] == [{"mode": "param", "groupByData": "recipe.epochs"}]
    assert state["runsHiddenMode"] == "SHOW_ALL" and state["useGroupedValuesInCharts"] is False
    charts = {c["type"]: c for c in state["compareRunCharts"]}
    assert charts["SCATTER"]["xaxis"] == {"key": "log10_flops", "type": "METRIC"}
    assert charts["CONTOUR"]["zaxis"] == {"key": "top1", "type": "METRIC"}
    assert charts["PARALLEL"]["selectedParams"] == list(view.AXES)
    assert {c["metricSectionId"] for c in charts.values()} == {s["uuid"] for s in state["compareRunSections"]}


def _point(tracker: MlflowTracker, name: str, epochs: int, flops: float | None, **tags) -> str:
    run_id = tracker.start_point(name, {"model.width": 0.25, "model.depth": 14, "data.resolution": 8,
                                        "recipe.epochs": epochs, "seed": 0}, {"point_key": name, **tags})
    tracker.finish_point({"top1": 0.5, **({"flops": flops} if flops else {})}, {})
    return run_id


def test_install_writes_only_its_own_view_and_completes_runs_of_an_earlier_version(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    tracker = MlflowTracker(uri, "legacy")  # runs as an earlier version recorded them: no view, no colours
    short = _point(tracker, "short", 1, 2e6)
    long = _point(tracker, "long", 10, 1e7)
    picked = _point(tracker, "picked", 10, 5e6, **{"mlflow.runColor": "#123456"})  # the user's own colour
    failed = _point(tracker, "failed", 1, None)
    mine = "mlflow.sharedViewState.0c7e1f"  # a view the user saved from the UI
    client.set_experiment_tag(tracker.experiment_id, mine, '{"selectedColumns": []}')

    assert view.install(client, tracker.experiment_id) == 4
    experiment = client.get_experiment(tracker.experiment_id)
    assert json.loads(experiment.tags[view.VIEW_TAG]) == view.state()
    assert experiment.tags[mine] == '{"selectedColumns": []}'
    runs = {r.info.run_id: r for r in client.search_runs([tracker.experiment_id], "tags.point_key != ''")}
    assert runs[short].data.metrics["log10_flops"] == pytest.approx(math.log10(2e6))
    assert runs[long].data.metrics["log10_flops"] == pytest.approx(7.0)
    assert "log10_flops" not in runs[failed].data.metrics
    colors = {k: runs[k].data.tags["mlflow.runColor"] for k in (short, long, picked, failed)}
    assert colors[short] == colors[failed] == view.PALETTE[0] and colors[long] == view.PALETTE[1]
    assert colors[picked] == "#123456"
    assert runs[short].data.metrics["top1"] == 0.5  # the record itself is untouched
    # opened again: nothing left to complete, the same view
    assert view.install(client, tracker.experiment_id) == 0
    assert client.get_experiment(tracker.experiment_id).tags[view.VIEW_TAG] == experiment.tags[view.VIEW_TAG]


def test_a_decide_studys_runs_carry_the_round_that_proposed_them(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    tracker = MlflowTracker(uri, "adaptive")
    first = _point(tracker, "a", 1, 2e6)
    assert view.tag_round(client, tracker.experiment_id, {(0.25, 14, 8, 1, 0)}, 1) == 1
    second = _point(tracker, "b", 1, 2e6)  # the same point again (a failed one retried)
    assert view.tag_round(client, tracker.experiment_id, {(0.25, 14, 8, 1, 0)}, 2) == 1
    assert client.get_run(first).data.tags["decide_round"] == "1"
    assert client.get_run(second).data.tags["decide_round"] == "2"
    view.install(client, tracker.experiment_id)
    shown = json.loads(client.get_experiment(tracker.experiment_id).tags[view.VIEW_TAG])["selectedColumns"]
    assert "tags.`decide_round`" in shown
