"""Whether this user may reach and write the store, checked in seconds before anything trains:
nobody listening at the tracking URI, credentials a tracking server refuses, or a sweep that
belongs to another user are each a ConfigError naming what to set (study.record.tracking keeps
the record itself)."""
from __future__ import annotations

import socket

from study.record.redaction import redact
from study.record.contract import experiment_name


def check_reachable(uri: str, timeout_s: float = 3.0) -> None:
    """Raise ConfigError when an http(s) or database-server URI has nobody listening, before
    anything trains (MLflow's own client would retry for minutes)."""
    from urllib.parse import urlsplit

    from study.settings.config import ConfigError

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


CREDENTIALS = ("set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (`set -a; . NAME.env; set +a` with the "
               "file `make user-add` wrote) or write them in ~/.mlflow/credentials")


def check_store(uri: str, sweep: str | None = None, write: bool = True) -> bool:
    """Raise ConfigError, in seconds and before anything trains, when nobody answers at `uri`,
    when a tracking server refuses this user's credentials (MLFLOW_TRACKING_USERNAME /
    MLFLOW_TRACKING_PASSWORD, or MLflow's credentials file), or, with `write`, when `sweep`
    belongs to another user who granted this one no EDIT. Returns whether this user may write
    the sweep (False only when `write` is off and the sweep is another's)."""
    check_reachable(uri)
    if not uri.startswith(("http://", "https://")):
        return True
    from study.settings.config import ConfigError

    user = _user(uri)
    status, body = _call(uri, "GET", "/api/2.0/mlflow/experiments/get-by-name",
                         params={"experiment_name": experiment_name(sweep or "")})
    if status == 401:
        what = (f"refused the credentials of user {user!r} (a wrong password, or no such user)" if user
                else "asks who you are: no credentials were given")
        raise ConfigError(f"invalid settings:\n  tracking.uri={redact(uri)!r}: the tracking server {what}; {CREDENTIALS}")
    if sweep is None or status != 200:  # 404: a new sweep, this user's to create
        return True
    experiment = body["experiment"]
    status, _ = _call(uri, "POST", "/api/2.0/mlflow/experiments/set-experiment-tag",  # the same value: a no-op write
                      json={"experiment_id": experiment["experiment_id"], "key": "sweep", "value": sweep})
    if status != 403:
        return True
    if not write:
        return False
    raise ConfigError(f"invalid settings:\n  sweep={sweep}: this sweep on {redact(uri)} belongs to another user; "
                      f"{user!r} may read it but not record into it. Use another sweep=NAME, or ask its owner or the "
                      f"server's admin: make user-grant NAME={user} SWEEP={sweep} PERMISSION=EDIT")


def _user(uri: str) -> str | None:
    from mlflow.utils.credentials import get_default_host_creds

    return get_default_host_creds(uri).username


def _call(uri: str, method: str, endpoint: str, **kwargs) -> tuple[int, dict]:
    """(HTTP status, JSON body) of one request with this user's credentials, not retried."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    response = http_request(get_default_host_creds(uri), endpoint, method, max_retries=0, timeout=10,
                            raise_on_status=False, **kwargs)
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, {}
