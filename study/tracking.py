"""Where results go. The trainer and runner talk to a `Tracker`; `MlflowTracker` keeps the
run record of ../shared/DESIGN.md in MLflow (one experiment and one parent run per sweep,
one child run per grid point); `NullTracker` keeps everything in memory for tests.
"""
from __future__ import annotations

import random
import re
import socket
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

PARENT_ROLE = "parent"


class Tracker(Protocol):
    def finished_run(self, run_key: str) -> str | None: ...
    def start_point(self, name: str, params: dict[str, Any], tags: dict[str, str]) -> str: ...
    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None: ...
    def finish_point(self, metrics: dict[str, float], artifacts: dict[str, Any]) -> None: ...
    def fail_point(self, reason: str, status: str = "FAILED") -> None: ...
    def resume_point(self, run_id: str, run_key: str) -> bool: ...
    def adopt_orphan(self, run_key: str) -> str | None: ...
    def start_child(self, name: str, params: dict[str, Any], tags: dict[str, str]) -> "ChildRun": ...
    def annotate(self, params: dict[str, Any], tags: dict[str, str]) -> None: ...


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

    def log_epoch(self, epoch, metrics) -> None:
        self.runs[-1]["epochs"].append((epoch, dict(metrics)))

    def finish_point(self, metrics, artifacts) -> None:
        run = self.runs[-1]
        run.update(metrics=dict(metrics), artifacts=dict(artifacts), status="FINISHED")
        self.finished[run["tags"]["run_key"]] = str(len(self.runs))

    def fail_point(self, reason, status="FAILED") -> None:
        self.runs[-1].update(status=status, reason=reason)

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
        self.runs[-1]["params"].update(params)
        self.runs[-1]["tags"].update(tags)

    def start_child(self, name, params, tags) -> NullChild:
        record = {"name": name, "params": dict(params), "tags": dict(tags), "epochs": []}
        self.runs[-1].setdefault("children", []).append(record)
        return NullChild(record)


class MlflowTracker:
    """One experiment per sweep (named after it) holding one parent run, and one child run
    per grid point nested under it through the `mlflow.parentRunId` tag."""

    def __init__(self, uri: str, sweep: str, artifact_root: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.client = Retrying(MlflowClient(tracking_uri=uri))
        self.sweep = sweep
        self.experiment_id = self._experiment(sweep, artifact_root)
        self.parent_id = self._parent()
        self.run_id: str | None = None

    def _experiment(self, name: str, artifact_root: str | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = Path(artifact_root, name).as_uri() if artifact_root else None
        return self.client.create_experiment(name, artifact_location=location)

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
                                     tags={**tags, "sweep": self.sweep, "mlflow.parentRunId": self.parent_id})
        self.run_id = run.info.run_id
        self.client.log_batch(self.run_id, params=[Param(k, _param_str(v)) for k, v in params.items()])
        return self.run_id

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self._log_metrics(metrics, step=epoch)

    def finish_point(self, metrics: dict[str, float], artifacts: dict[str, Any]) -> None:
        self._log_metrics(metrics, step=0)
        for path, content in artifacts.items():
            if isinstance(content, str):
                self.client.log_text(self.run_id, content, path)
            else:
                self.client.log_dict(self.run_id, content, path)
        self.client.set_terminated(self.run_id, "FINISHED")

    def fail_point(self, reason: str, status: str = "FAILED") -> None:
        self.client.set_tag(self.run_id, "status_reason", reason[:5000])
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
        """Add params (new keys only: MLflow params are immutable) and tags to the point run."""
        from mlflow.entities import Param, RunTag

        self.client.log_batch(self.run_id, params=[Param(k, _param_str(v)) for k, v in params.items()],
                              tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def start_child(self, name: str, params: dict[str, Any], tags: dict[str, str]) -> "MlflowChild":
        from mlflow.entities import Param

        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={**tags, "sweep": self.sweep, "mlflow.parentRunId": self.run_id})
        self.client.log_batch(run.info.run_id, params=[Param(k, _param_str(v)) for k, v in params.items()])
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
            self.client.set_tag(self.run_id, "status_reason", reason[:5000])
        self.client.set_terminated(self.run_id, status)


BUSY_MARKERS = ("database is locked", "database table is locked", "could not obtain lock")
RETRY_FOR_S = 120.0


class Retrying:
    """An MlflowClient whose calls are retried with backoff while the store is busy (SQLite
    allows one writer at a time: parallel jobs meet 'database is locked')."""

    def __init__(self, client) -> None:
        self._client = client

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "_client":  # pickling asks before _client exists
            raise AttributeError(name)
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            delay, deadline = 0.05, time.monotonic() + RETRY_FOR_S
            while True:
                try:
                    return attr(*args, **kwargs)
                except Exception as e:
                    if not any(m in str(e).lower() for m in BUSY_MARKERS) or time.monotonic() > deadline:
                        raise
                    time.sleep(delay * (1 + random.random()))
                    delay = min(delay * 2, 2.0)
        return call


def _log_metrics(client, run_id: str, metrics: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


def _param_str(value: Any) -> str:
    return "null" if value is None else str(value)


def redact(uri: str) -> str:
    """The URI with any password replaced: 'postgresql://lab:***@db/mlflow'. Credentials are
    better kept out of URIs altogether: MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD for
    a server, ~/.pgpass or PGPASSWORD for PostgreSQL."""
    return re.sub(r"(://[^/:@]*:)[^@/]*@", r"\1***@", uri)


def check_reachable(uri: str, timeout_s: float = 3.0) -> None:
    """Raise ConfigError when an http(s) or database-server URI has nobody listening, before
    anything trains (MLflow's own client would retry for minutes)."""
    from urllib.parse import urlsplit

    from study.config import ConfigError

    parts = urlsplit(uri)
    if parts.scheme.split("+")[0] not in ("http", "https", "postgresql", "mysql", "mssql"):
        return
    default_port = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}
    host, port = parts.hostname or "localhost", parts.port or default_port[parts.scheme.split("+")[0]]
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        raise ConfigError(f"invalid settings:\n  tracking.uri={redact(uri)!r}: no tracking server answers at "
                          f"{host}:{port} ({e.strerror or e}); start it (make server) or use tracking=local") from e


@lru_cache(maxsize=4)
def mlflow_tracker(uri: str, sweep: str, artifact_root: str | None) -> MlflowTracker:
    """One tracker per store and sweep in a process: the store is opened once per sweep."""
    return MlflowTracker(uri, sweep, artifact_root)
