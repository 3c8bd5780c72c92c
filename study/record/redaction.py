"""Credentials never reach the store, the artifacts, the outputs or the console: the password
of every URI (and secret query values) is replaced by '***' in params, tags, artifacts, the
files Hydra saves for each job, log records and printed lines."""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

# scheme://user:password@ (a password may hold '/'; Hydra writes overrides with ':' escaped as '\:')
_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*\\?://[^\s/:@'\"\\]*\\?:)[^\s@'\"]*@")
_SECRET_QUERY = re.compile(r"([?&;](?:password|passwd|pwd|token|secret|access_key|sslpassword)=)[^&;\s'\"]*",
                           re.IGNORECASE)


def redact(text: str) -> str:
    """The text with the password of every URI in it replaced: 'postgresql://lab:***@db/mlflow'
    (and secret query values: '?password=***'). Credentials are better kept out of URIs
    altogether: MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD for a server, ~/.pgpass or
    PGPASSWORD for PostgreSQL."""
    return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub(r"\1***@", text))


def redact_values(obj: Any) -> Any:
    """A JSON-like structure with every string redacted."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_values(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_values(v) for v in obj]
    return obj


def redact_hydra_output(folder: Path) -> None:
    """Hydra saves the composed config and the command line of every job (config.yaml,
    overrides.yaml, hydra.yaml); passwords in URIs there are replaced, as everywhere, and
    log records (Hydra's echo of overrides included) are redacted from here on."""
    for path in Path(folder).glob("*.yaml"):
        text = path.read_text()
        if (clean := redact(text)) != text:
            path.write_text(clean)
    redact_logs()


def redact_logs() -> None:
    """Every log record made in this process from now on is redacted (Hydra echoes each job's
    overrides through its own loggers, whose handlers it replaces per job)."""
    make = logging.getLogRecordFactory()
    if getattr(make, "redacting", False):
        return

    def redacted_record(*args, **kwargs) -> logging.LogRecord:
        record = make(*args, **kwargs)
        message = record.getMessage()
        if (clean := redact(message)) != message:
            record.msg, record.args = clean, None
        return record

    redacted_record.redacting = True
    logging.setLogRecordFactory(redacted_record)
