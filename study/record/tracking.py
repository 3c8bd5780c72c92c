"""Where results go. The trainer and runner talk to a `Tracker`; `MlflowTracker` keeps the
run record of docs/run-record.md in MLflow (one experiment and one parent run per sweep,
one child run per grid point); `NullTracker` keeps everything in memory for tests.
"""
from __future__ import annotations

import os
import random
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from study.record.contract import PARENT_ROLE, experiment_name
from study.record.redaction import redact, redact_values

# Each sweep's experiment (study.record.contract.experiment_name) is also tagged with MLflow 3's
# kind for model training.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
NOTE_TAG = "mlflow.note.content"
# Errors that pass: a busy store (SQLite allows one writer at a time: parallel jobs meet
# 'database is locked') and an unreachable or restarting one (a tracking server, PostgreSQL).
TRANSIENT_MARKERS = ("database is locked", "database table is locked", "could not obtain lock",
                     "connection refused", "max retries exceeded", "failed to establish a new connection",
                     "connection reset", "connection aborted", "remote end closed connection", "timed out",
                     "temporarily unavailable", "server closed the connection", "could not connect to server",
                     "connection to server", "bad gateway", "service unavailable", "gateway timeout",
                     "status code 502", "status code 503", "status code 504")
RETRY_FOR_S = 120.0
EPOCH_RETRY_S = 5.0  # an epoch's metrics wait at most this long before the point buffers them


class Tracker(Protocol):
    def finished_run(self, run_key: str) -> str | None: ...
    def start_point(self, name: str, params: dict[str, Any], tags: dict[str, str]) -> str: ...
    def log_epoch(self, epoch: int, metrics: dict[str, float], timestamp_ms: int | None = None) -> None: ...
    def finish_point(self, metrics: dict[str, float], artifacts: dict[str, Any],
                     epochs: list = ()) -> None: ...
    def fail_point(self, reason: str, status: str = "FAILED", rerun: str = "") -> None: ...
    def resume_point(self, run_id: str, run_key: str) -> bool: ...
    def adopt_orphan(self, run_key: str) -> str | None: ...
    def start_child(self, name: str, params: dict[str, Any], tags: dict[str, str]) -> "ChildRun": ...
    def annotate(self, params: dict[str, Any], tags: dict[str, str]) -> None: ...
    def migrate(self, legacy_run_key: str, run_key: str, point_key: str, only: list[str] | None = None,
                params: dict[str, Any] | None = None) -> int: ...
    def recorded_roots(self, run_key: str) -> dict[str, str | None]: ...


class ChildRun(Protocol):
    """A run nested under the current point run (a tuning trial)."""
    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None: ...
    def end(self, status: str, metrics: dict[str, float] | None = None, reason: str | None = None) -> None: ...


class NullChild:
    def __init__(self, record: dict) -> None:
        self.record = record

    def log_epoch(self, epoch, metrics) -> None:
        self.record["epochs"].append((epoch, dict(metrics)))

    def end(self, status, metrics=None, reason=None) -> None:
        self.record.update(status=status, metrics=dict(metrics or {}), reason=reason)


class NullTracker:
    """Keeps the record in memory; `finished` maps point keys to fake run ids."""

    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []
        self.finished: dict[str, str] = {}

    def finished_run(self, run_key: str) -> str | None:
        return self.finished.get(run_key)

    def start_point(self, name, params, tags) -> str:
        self.runs.append({"name": name, "params": dict(params), "tags": dict(tags), "epochs": [],
                          "metrics": {}, "artifacts": {}, "status": "RUNNING"})
        return str(len(self.runs))

    def log_epoch(self, epoch, metrics, timestamp_ms=None) -> None:
        self.runs[-1]["epochs"].append((epoch, dict(metrics)))

    def finish_point(self, metrics, artifacts, epochs=()) -> None:
        run = self.runs[-1]
        run["epochs"].extend((e, dict(m)) for e, m, *_ in epochs)
        run.update(metrics=dict(metrics), artifacts=dict(artifacts), status="FINISHED")
        self.finished[run["tags"]["run_key"]] = str(len(self.runs))

    def fail_point(self, reason, status="FAILED", rerun="") -> None:
        self.runs[-1].update(status=status, reason=reason, rerun=rerun)

    def resume_point(self, run_id, run_key) -> bool:
        i = int(run_id) - 1
        if not 0 <= i < len(self.runs) or self.runs[i]["status"] == "FINISHED" \
                or self.runs[i]["tags"].get("run_key") != run_key:
            return False
        self.runs.append(self.runs.pop(i) | {"status": "RUNNING"})
        return True

    def adopt_orphan(self, run_key) -> str | None:
        for i, r in enumerate(self.runs):
            if r["status"] == "RUNNING" and r["tags"].get("run_key") == run_key:
                self.runs.append(self.runs.pop(i))
                return str(i + 1)
        return None

    def annotate(self, params, tags) -> None:
        self.runs[-1]["params"] = dict(params) | self.runs[-1]["params"]
        self.runs[-1]["tags"].update(tags)

    def migrate(self, legacy_run_key, run_key, point_key, only=None, params=None) -> int:
        moved = [(i, r) for i, r in enumerate(self.runs, 1) if r["tags"].get("run_key") == legacy_run_key
                 and (only is None or str(i) in only)]
        for i, r in moved:
            r["tags"].update(run_key=run_key, point_key=point_key, legacy_run_key=legacy_run_key)
            r["params"] = dict(params or {}) | r["params"]
            if r["status"] == "FINISHED" and self.finished.get(legacy_run_key) == str(i):
                self.finished[run_key] = self.finished.pop(legacy_run_key)
        return len(moved)

    def recorded_roots(self, run_key) -> dict[str, str | None]:
        return {str(i): _root_of(r["tags"], lambda: r["artifacts"].get("config.yaml"))
                for i, r in enumerate(self.runs, 1) if r["tags"].get("run_key") == run_key}

    def start_child(self, name, params, tags) -> NullChild:
        record = {"name": name, "params": dict(params), "tags": dict(tags), "epochs": []}
        self.runs[-1].setdefault("children", []).append(record)
        return NullChild(record)


class MlflowTracker:
    """One experiment per sweep (named after it) holding one parent run, and one child run
    per grid point nested under it through the `mlflow.parentRunId` tag."""

    def __init__(self, uri: str, sweep: str, artifact_root: str | None = None, retry_s: float = RETRY_FOR_S) -> None:
        from mlflow.tracking import MlflowClient

        # Outages are retried here (Retrying), with a budget; MLflow's own HTTP retries would
        # otherwise hold every call for minutes while a server restarts.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        client = MlflowClient(tracking_uri=uri)
        self.client = Retrying(client, retry_s)
        self._epoch_client = Retrying(client, min(retry_s, EPOCH_RETRY_S))  # training waits at most this
        self.sweep = sweep
        self.experiment_id = self._experiment(sweep, artifact_root)
        self.parent_id = self._parent()
        self.run_id: str | None = None

    def _experiment(self, sweep: str, artifact_root: str | None) -> str:
        """The sweep's experiment: found, renamed from the bare sweep name earlier versions gave
        it (its runs and ids unchanged), or created; its tags set each time it is opened."""
        name = experiment_name(sweep)
        found = self.client.get_experiment_by_name(name) or self._legacy_experiment(sweep)
        if found is not None:
            experiment_id = found.experiment_id
            if found.name != name:
                self.client.rename_experiment(experiment_id, name)
        else:
            location = Path(artifact_root, sweep).as_uri() if artifact_root else None
            experiment_id = self.client.create_experiment(name, artifact_location=location)
        for key, value in {**EXPERIMENT_TAGS, "sweep": sweep}.items():
            if found is None or found.tags.get(key) != value:
                self.client.set_experiment_tag(experiment_id, key, value)
        return experiment_id

    def _legacy_experiment(self, sweep: str):
        """This sweep's experiment under its bare name, if a parent run shows it is one."""
        found = self.client.get_experiment_by_name(sweep)
        if found is None or not self.client.search_runs(
                [found.experiment_id], f"tags.role = '{PARENT_ROLE}' and tags.sweep = '{sweep}'", max_results=1):
            return None
        return found

    def describe(self, text: str) -> None:
        """The experiment's description, shown above its runs in the UI."""
        self.client.set_experiment_tag(self.experiment_id, NOTE_TAG, redact(text))

    def _parent(self) -> str:
        runs = self.client.search_runs([self.experiment_id], f"tags.role = '{PARENT_ROLE}'",
                                       max_results=1, order_by=["attributes.start_time ASC"])
        if runs:
            return runs[0].info.run_id
        run = self.client.create_run(self.experiment_id, run_name=self.sweep,
                                     tags={"role": PARENT_ROLE, "sweep": self.sweep})
        return run.info.run_id

    def finished_run(self, run_key: str) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            f"tags.run_key = '{run_key}' and attributes.status = 'FINISHED'", max_results=1)
        return runs[0].info.run_id if runs else None

    def start_point(self, name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        from mlflow.entities import Param

        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags=_redacted({**tags, "sweep": self.sweep, "mlflow.parentRunId": self.parent_id}))
        self.run_id = run.info.run_id
        self.client.log_batch(self.run_id, params=[Param(k, param_str(v)) for k, v in params.items()])
        return self.run_id

    def log_epoch(self, epoch: int, metrics: dict[str, float], timestamp_ms: int | None = None) -> None:
        _log_metrics(self._epoch_client, self.run_id, metrics, epoch, timestamp_ms)

    def finish_point(self, metrics: dict[str, float], artifacts: dict[str, Any], epochs: list = ()) -> None:
        """Log the epochs still waiting (buffered during an outage: [epoch, metrics, timestamp
        ms]), the final metrics and the artifacts, then mark the run FINISHED."""
        for epoch, epoch_metrics, *stamp in epochs:
            _log_metrics(self.client, self.run_id, epoch_metrics, epoch, stamp[0] if stamp else None)
        self._log_metrics(metrics, step=0)
        for path, content in artifacts.items():
            if isinstance(content, str):
                self.client.log_text(self.run_id, redact(content), path)
            else:
                self.client.log_dict(self.run_id, redact_values(content), path)
        self.client.set_terminated(self.run_id, "FINISHED")

    def fail_point(self, reason: str, status: str = "FAILED", rerun: str = "") -> None:
        self.client.set_tag(self.run_id, "status_reason", redact(reason)[:5000])
        if rerun:
            self.client.set_tag(self.run_id, "rerun_command", redact(rerun)[:5000])
        self.client.set_terminated(self.run_id, status)

    def resume_point(self, run_id: str, run_key: str) -> bool:
        """Continue an unfinished run of this point (its checkpoint names it); False when the
        run is gone, finished, or of another point."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return False
        if run.info.status == "FINISHED" or run.data.tags.get("run_key") != run_key \
                or run.info.experiment_id != self.experiment_id:
            return False
        self.client.update_run(run_id, status="RUNNING")
        self.client.set_tag(run_id, "resumed", str(int(run.data.tags.get("resumed", "0")) + 1))
        self.run_id = run_id
        return True

    def adopt_orphan(self, run_key: str) -> str | None:
        """Take over this point's run left RUNNING by a killed process before its first
        checkpoint (it holds params but no epochs yet): the point restarts inside it, so a
        kill never leaves a second run behind. Returns its id, or None."""
        runs = self.client.search_runs(
            [self.experiment_id], f"tags.run_key = '{run_key}' and attributes.status = 'RUNNING'",
            order_by=["attributes.start_time DESC"])
        if not runs:
            return None
        self.run_id = runs[0].info.run_id
        self.client.set_tag(self.run_id, "restarted", str(int(runs[0].data.tags.get("restarted", "0")) + 1))
        return self.run_id

    def annotate(self, params: dict[str, Any], tags: dict[str, str]) -> None:
        """Add the params the point run lacks (MLflow params are immutable: one it holds stays)
        and set tags."""
        from mlflow.entities import Param, RunTag

        held = self.client.get_run(self.run_id).data.params if params else {}
        self.client.log_batch(self.run_id, params=[Param(k, param_str(v)) for k, v in params.items() if k not in held],
                              tags=[RunTag(k, v) for k, v in _redacted(tags).items()])

    def migrate(self, legacy_run_key: str, run_key: str, point_key: str, only: list[str] | None = None,
                params: dict[str, Any] | None = None) -> int:
        """Re-tag this sweep's runs recorded under one of the point's earlier run keys (all, or
        the runs `only` names) with its current keys (the old one stays in the tag
        `legacy_run_key`) and add `params` they lack; returns how many."""
        from mlflow.entities import Param

        runs = [r for r in self.client.search_runs([self.experiment_id], f"tags.run_key = '{legacy_run_key}'")
                if only is None or r.info.run_id in only]
        for run in runs:
            for key, value in (("run_key", run_key), ("point_key", point_key), ("legacy_run_key", legacy_run_key)):
                self.client.set_tag(run.info.run_id, key, value)
            if new := [Param(k, param_str(v)) for k, v in (params or {}).items() if k not in run.data.params]:
                self.client.log_batch(run.info.run_id, params=new)
        return len(runs)

    def recorded_roots(self, run_key: str) -> dict[str, str | None]:
        """The image folder each run of `run_key` trained on (its `data.root` tag, else its
        config.yaml artifact's), by run id; None where neither says."""
        runs = self.client.search_runs([self.experiment_id], f"tags.run_key = '{run_key}'")
        return {r.info.run_id: _root_of(r.data.tags, lambda r=r: self._artifact_text(r.info.run_id, "config.yaml"))
                for r in runs}

    def _artifact_text(self, run_id: str, path: str) -> str | None:
        import tempfile

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        try:
            with tempfile.TemporaryDirectory() as tmp:
                return Path(self.client.download_artifacts(run_id, path, tmp)).read_text()
        except Exception:  # no such artifact, or a store that cannot serve it
            return None

    def start_child(self, name: str, params: dict[str, Any], tags: dict[str, str]) -> "MlflowChild":
        from mlflow.entities import Param

        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags=_redacted({**tags, "sweep": self.sweep, "mlflow.parentRunId": self.run_id}))
        self.client.log_batch(run.info.run_id, params=[Param(k, param_str(v)) for k, v in params.items()])
        return MlflowChild(self.client, run.info.run_id)

    def close_sweep(self, failed: bool) -> None:
        self.client.set_terminated(self.parent_id, "FAILED" if failed else "FINISHED")

    def _log_metrics(self, metrics: dict[str, float], step: int) -> None:
        _log_metrics(self.client, self.run_id, metrics, step)


class MlflowChild:
    def __init__(self, client, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        _log_metrics(self.client, self.run_id, metrics, epoch)

    def end(self, status: str, metrics: dict[str, float] | None = None, reason: str | None = None) -> None:
        if metrics:
            _log_metrics(self.client, self.run_id, metrics, 0)
        if reason:
            self.client.set_tag(self.run_id, "status_reason", redact(reason)[:5000])
        self.client.set_terminated(self.run_id, status)


def _root_of(tags: dict[str, str], config_text) -> str | None:
    """The data folder a run trained on: its `data.root` tag, else `data.root` in the resolved
    config that `config_text()` returns (YAML, or None)."""
    if tags.get("data.root"):
        return tags["data.root"]
    import yaml

    try:
        root = ((yaml.safe_load(config_text() or "") or {}).get("data") or {}).get("root")
    except yaml.YAMLError:
        return None
    return str(Path(root).expanduser().resolve()) if root else None


def is_transient(error: BaseException) -> bool:
    return any(m in str(error).lower() for m in TRANSIENT_MARKERS)


class Retrying:
    """An MlflowClient whose calls are retried with backoff (50 ms doubling up to 2 s, with
    jitter) while the error is transient, for at most `retry_s` seconds; any other error, or
    one that outlasts the budget, is raised."""

    def __init__(self, client, retry_s: float = RETRY_FOR_S, sleep=time.sleep) -> None:
        self._client, self._retry_s, self._sleep = client, retry_s, sleep

    def __getattr__(self, name: str):
        if name.startswith("__") or name.startswith("_"):  # pickling asks before _client exists
            raise AttributeError(name)
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            delay, deadline = 0.05, time.monotonic() + self._retry_s
            while True:
                try:
                    return attr(*args, **kwargs)
                except Exception as e:
                    if not is_transient(e) or time.monotonic() > deadline:
                        raise
                    self._sleep(delay * (1 + random.random()))
                    delay = min(delay * 2, 2.0)
        return call


def _log_metrics(client, run_id: str, metrics: dict[str, float], step: int, timestamp_ms: int | None = None) -> None:
    """One batch of metrics at `step`. An epoch keeps the timestamp it was first sent with, so a
    batch sent again after a lost answer (the server took it, then died) is the same metric
    points, which the store keeps once."""
    from mlflow.entities import Metric

    now = timestamp_ms or int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


def param_str(value: Any) -> str:
    """A value as the run record's params write it."""
    return "null" if value is None else redact(str(value))


def _redacted(tags: dict[str, Any]) -> dict[str, str]:
    return {k: redact(str(v)) for k, v in tags.items()}


@lru_cache(maxsize=4)
def mlflow_tracker(uri: str, sweep: str, artifact_root: str | None, retry_s: float = RETRY_FOR_S) -> MlflowTracker:
    """One tracker per store and sweep in a process: the store is opened once per sweep."""
    return MlflowTracker(uri, sweep, artifact_root, retry_s)
