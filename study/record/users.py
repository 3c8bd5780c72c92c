"""`python -m study.server user ...` (make user-add, user-grant, user-remove): the users of an
authenticated `make server` and their permissions on sweeps, through MLflow's own auth API.

    python -m study.server user [--server URL] [--home DIR] add NAME
    python -m study.server user [--server URL] [--home DIR] grant NAME SWEEP READ|EDIT|MANAGE|NONE
    python -m study.server user [--server URL] [--home DIR] remove NAME

It acts as the server's admin (<home>/server-admin.env), or else as whoever the
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD variables name (a sweep's owner may grant
on it). A new user's random password goes to <home>/users/NAME.env (mode 600), to hand over;
it is never printed. Every user reads every sweep; a sweep belongs to whoever created it.
"""
from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
from pathlib import Path

from study.record.contract import experiment_name
from study.settings.config import project_root

ADMIN = "admin"
ADMIN_FILE = "server-admin.env"  # in the server's home
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PERMISSIONS = {"READ": "READ", "EDIT": "EDIT", "MANAGE": "MANAGE", "NONE": "NO_PERMISSIONS"}


def write_secret(path: Path, text: str) -> None:
    """A file created mode 600: never readable by others, not even for an instant."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def write_secret_env(path: Path, username: str, password: str) -> None:
    """Two sourceable lines (`set -a; . FILE; set +a`), mode 600."""
    write_secret(path, f"MLFLOW_TRACKING_USERNAME={username}\nMLFLOW_TRACKING_PASSWORD={password}\n")


def read_secret_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip().removeprefix("export "): v.strip() for k, v in pairs}


def user_file(home: Path, name: str) -> Path:
    return home / "users" / f"{name}.env"


def add(client, home: Path, name: str) -> str:
    password = secrets.token_urlsafe(24)
    client.create_user(name, password)
    write_secret_env(user_file(home, name), name, password)
    return (f"user {name!r} added; their credentials are in {user_file(home, name)} (mode 600): hand the file "
            f"over; they use it with `set -a; . {name}.env; set +a`. They read every sweep and own what they create")


def grant(client, server: str, name: str, sweep: str, permission: str) -> str:
    from mlflow.tracking import MlflowClient

    experiment = MlflowClient(tracking_uri=server).get_experiment_by_name(experiment_name(sweep))
    if experiment is None:
        raise LookupError(f"no sweep named {sweep!r} on {server} (a sweep's experiment exists once it has started)")
    client.grant_user_permission(name, "experiment", experiment.experiment_id, PERMISSIONS[permission])
    return f"user {name!r} now has {permission} on sweep {sweep!r} (experiment {experiment.experiment_id})"


def remove(client, home: Path, name: str) -> str:
    if name == ADMIN:
        raise ValueError(f"the admin ({ADMIN!r}) cannot be removed")
    client.delete_user(name)
    user_file(home, name).unlink(missing_ok=True)
    return f"user {name!r} removed (the sweeps they created stay, managed by the admin)"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m study.server user", description=__doc__.splitlines()[0])
    p.add_argument("--server", default=os.environ.get("STUDY_SERVER")
                   or f"http://127.0.0.1:{os.environ.get('STUDY_SERVER_PORT', 5001)}",
                   help="the tracking server (default: $STUDY_SERVER, else http://127.0.0.1:$STUDY_SERVER_PORT)")
    p.add_argument("--home", default=project_root(), help="the server's home: its admin's file, users' files")
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("add", help="a new user with a random password").add_argument("name")
    g = sub.add_parser("grant", help="a user's permission on a sweep")
    g.add_argument("name")
    g.add_argument("sweep")
    g.add_argument("permission", type=str.upper, choices=list(PERMISSIONS))
    sub.add_parser("remove", help="delete a user").add_argument("name")
    a = p.parse_args(argv)
    if not NAME.match(a.name):
        p.error(f"user name {a.name!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit")
    return a


def main(argv: list[str]) -> int:
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    a = parse(argv)
    home = Path(a.home).resolve()
    if (admin := home / ADMIN_FILE).exists():  # only this process's environment: no command line holds it
        os.environ.update(read_secret_env(admin))
    elif not os.environ.get("MLFLOW_TRACKING_USERNAME"):
        print(f"error: no {admin} (the server writes it on first start) and no MLFLOW_TRACKING_USERNAME / "
              "MLFLOW_TRACKING_PASSWORD set: name the server's home with --home, or set those variables", file=sys.stderr)
        return 2
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    client = get_app_client("basic-auth", tracking_uri=a.server)
    try:
        if a.action == "add":
            said = add(client, home, a.name)
        elif a.action == "grant":
            said = grant(client, a.server, a.name, a.sweep, a.permission)
        else:
            said = remove(client, home, a.name)
    except (MlflowException, LookupError, ValueError) as e:
        print(f"error: {getattr(e, 'message', e)}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: no server answers at {a.server} ({e}); start it: make server", file=sys.stderr)
        return 2
    print(said)
    return 0
