"""`make server`: a shared MLflow tracking server backed by PostgreSQL, for a lab that has
outgrown one SQLite file. Both listen on 127.0.0.1 only unless told otherwise.

    python -m study.server [--port 5001] [--pg-port 5433] [--host 127.0.0.1] [--home DIR]

It keeps a private PostgreSQL cluster in <home>/postgres (created on first start with a
random password in <home>/postgres.password, mode 600; run as root, the cluster belongs to
the `postgres` user under /var/lib/postgresql), starts it, then runs `mlflow server` in the
foreground with run artifacts proxied into <home>/server-artifacts. Ctrl-C (or SIGTERM)
stops both. Sweeps use it with `tracking=server` (conf/tracking/server.yaml).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from study.config import project_root

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def pg_tool(name: str) -> str:
    """A PostgreSQL server program (initdb, pg_ctl): Debian's versioned folder, else PATH."""
    for folder in PG_BIN_DIRS:
        if (folder / name).exists():
            return str(folder / name)
    if found := shutil.which(name):
        return found
    raise SystemExit(f"error: PostgreSQL's {name} was not found; install the server "
                     "(Debian/Ubuntu: apt-get install postgresql)")


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def cluster_dir(home: Path) -> Path:
    if os.geteuid() != 0:
        return home / "postgres"
    # PostgreSQL refuses to run as root: the cluster belongs to `postgres`, in its own tree.
    return Path("/var/lib/postgresql", "study-" + hashlib.sha256(str(home).encode()).hexdigest()[:12])


def ensure_cluster(home: Path, data: Path) -> str:
    """Create the cluster once (scram-sha-256 password auth on 127.0.0.1); returns the password."""
    secret = home / "postgres.password"
    if not (data / "PG_VERSION").exists():
        home.mkdir(parents=True, exist_ok=True)
        password = secrets.token_urlsafe(24)
        secret.write_text(password)
        secret.chmod(0o600)
        data.mkdir(parents=True, exist_ok=True)
        pwfile = data.parent / f".{data.name}.pw"
        pwfile.write_text(password)
        if os.geteuid() == 0:
            shutil.chown(data, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        pwfile.chmod(0o600)
        try:
            subprocess.run(_as_owner([pg_tool("initdb"), "-D", str(data), "-U", "mlflow", "--auth=scram-sha-256",
                                      f"--pwfile={pwfile}", "-E", "UTF8"]), check=True, stdout=subprocess.DEVNULL)
        finally:
            pwfile.unlink(missing_ok=True)
    return secret.read_text().strip()


def start_postgres(data: Path, host: str, port: int) -> None:
    options = f"-p {port} -c listen_addresses={host} -k {data}"
    subprocess.run(_as_owner([pg_tool("pg_ctl"), "-D", str(data), "-o", options, "-l", str(data / "server.log"),
                              "-w", "start"]), check=True)


def stop_postgres(data: Path) -> None:
    subprocess.run(_as_owner([pg_tool("pg_ctl"), "-D", str(data), "-m", "fast", "stop"]), check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def ensure_database(host: str, port: int, password: str) -> None:
    import psycopg2

    con = psycopg2.connect(host=host, port=port, user="mlflow", password=password, dbname="postgres")
    con.autocommit = True
    with con.cursor() as cur:
        cur.execute("select 1 from pg_database where datname = 'mlflow'")
        if cur.fetchone() is None:
            cur.execute("create database mlflow")
    con.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m study.server", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="interface of both servers (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=int(os.environ.get("STUDY_SERVER_PORT", 5001)))
    p.add_argument("--pg-port", type=int, default=int(os.environ.get("STUDY_PG_PORT", 5433)))
    p.add_argument("--home", default=project_root(), help="where the cluster's password and artifacts live")
    p.add_argument("--workers", default="2")
    a = p.parse_args(argv)
    home = Path(a.home).resolve()
    data = cluster_dir(home)
    password = ensure_cluster(home, data)
    start_postgres(data, a.host, a.pg_port)
    try:
        ensure_database(a.host, a.pg_port, password)
        artifacts = home / "server-artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PGPASSWORD=password)  # the password never appears in a URI or a log
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", a.host, "--port", str(a.port),
               "--workers", a.workers, "--backend-store-uri", f"postgresql+psycopg2://mlflow@{a.host}:{a.pg_port}/mlflow",
               "--artifacts-destination", str(artifacts)]
        print(f"MLflow tracking server on http://{a.host}:{a.port} (PostgreSQL on {a.host}:{a.pg_port}, "
              f"artifacts in {artifacts}); sweeps: tracking=server", flush=True)
        server = subprocess.Popen(cmd, env=env, start_new_session=True)
        signal.signal(signal.SIGTERM, lambda *_: server.terminate())
        try:
            server.wait()
        except KeyboardInterrupt:
            server.terminate()
            server.wait(timeout=30)
    finally:
        stop_postgres(data)


if __name__ == "__main__":
    main()
