"""The run-record contract (docs/run-record.md) that the training side writes and analysis/
reads: where a sweep's runs are, the names of a point's axes and final metrics, what a failure
reason and a server's refusal say, and the link that opens a sweep in MLflow's UI.

A leaf: it imports nothing of study, so analysis/ imports it (and only it) from study/
(tests/test_layout.py checks both).
"""
from __future__ import annotations

from urllib.parse import urlsplit

# A sweep's experiment: named so that none can be taken for MLflow's own `Default`, tagged with
# its sweep (what it is found by); its parent run carries the role tag.
EXPERIMENT_PREFIX = "sweep/"
PARENT_ROLE = "parent"
# A point run's grid axes, as params `<group>.<name>`.
AXIS_PARAMS = (("recipe", "epochs"), ("model", "width"), ("model", "depth"), ("data", "resolution"))
# The final metrics a point run carries (step 0), and those `make measure` writes per machine.
FINAL_METRICS = ("top1", "top5", "error", "minival/top1", "minival/top5", "flops", "params",
                 "activations", "latency_ms", "latency_batch", "train_step_ms", "train_img_per_s",
                 "peak_mem_mb", "train_time_s", "step_latency_ms", "step_latency_min_ms", "step_latency_max_ms",
                 "step_batch", "step_img_per_s", "step_peak_mem_mb")
ALONE_METRICS = ("step_latency_ms", "step_latency_min_ms", "step_latency_max_ms", "step_batch", "step_img_per_s",
                 "step_peak_mem_mb")
VIEW_KEY = "scaling-study"  # the study's saved view in MLflow's UI (study.record.view)


def experiment_name(sweep: str) -> str:
    return EXPERIMENT_PREFIX + sweep


def find_experiment(client, sweep: str):
    """The sweep's experiment: the one tagged `sweep=<name>`; a store no version since has
    opened keeps it under the bare sweep name. None when there is none."""
    tagged = client.search_experiments(filter_string=f"tags.sweep = '{sweep}'", max_results=1)
    return tagged[0] if tagged else client.get_experiment_by_name(sweep)


def failure_kind(reason: str) -> str:
    """What a failure reason (the `status_reason` tag) says before its details: 'diverged in
    bf16', 'out of memory', 'error: ValueError'."""
    head, _, rest = reason.partition(": ")
    return f"{head}: {rest.partition(':')[0]}" if head == "error" else head


def refused(error: BaseException) -> str | None:
    """What a tracking server's refusal means for this user (HTTP 401: who are you; 403: not
    yours to change), or None when the error is another."""
    text = str(error)
    if "error code 401" in text or "401 Client Error" in text:
        return ("the tracking server refused the credentials: set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD (or ~/.mlflow/credentials) to a user of the server")
    if "error code 403" in text or "403 Client Error" in text:
        return "the sweep belongs to another user, who has not granted you EDIT on it"
    return None


def ui_base(uri: str, port: int = 5000) -> str:
    """Where the UI of a store is: a tracking server serves its own; `make ui` serves a
    file store on 127.0.0.1:PORT."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path.rstrip('/')}"
    return f"http://127.0.0.1:{port}"


def runs_link(base: str, experiment_id: str) -> str:
    """The link that opens an experiment's runs on the study's view, in MLflow 3's "Model
    training" mode (without `workflowType` the UI opens its GenAI overview of traces)."""
    return f"{base}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}&workflowType=machine_learning"
