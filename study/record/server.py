"""`make server`: a shared MLflow tracking server backed by PostgreSQL, for a lab that has
outgrown one SQLite file, with MLflow's own authentication (`--app-name basic-auth`) on.

    python -m study.server [--port 5001] [--pg-port 5433] [--host 127.0.0.1] [--home DIR]
                           [--allowed-hosts NAMES] [--cors-allowed-origins URLS] [--no-auth]
    python -m study.server user add|grant|remove ...   (study.record.users)

It keeps a private PostgreSQL cluster in <home>/postgres (created on first start with a
random password in <home>/postgres.password, mode 600; run as root, the cluster belongs to
the `postgres` user under /var/lib/postgresql) listening on 127.0.0.1 only, whatever --host
says: MLflow is the only door. It holds two databases: `mlflow` (runs) and `mlflow_auth`
(users and permissions). On first start an admin user gets a random password, written to
<home>/server-admin.env (mode 600, two sourceable lines); the path is printed, never the
password. Every user may read every sweep; a sweep's experiment belongs to whoever created
it (MANAGE), and others write to it only when granted. MLflow runs in the foreground with run
artifacts proxied into <home>/server-artifacts and answers only Host headers and origins of
the names it serves. Ctrl-C (or SIGTERM) stops both. Sweeps use it with `tracking=server`.
"""
from __future__ import annotations

import argparse
import hashlib
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from study.record.users import ADMIN, ADMIN_FILE, read_secret_env, write_secret, write_secret_env
from study.settings.config import project_root

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
PG_HOST = "127.0.0.1"  # PostgreSQL never listens beyond loopback
AUTH_CONFIG = "server-auth.ini"
SECRET_KEY_FILE = "server-secret.key"  # the UI's CSRF key: the same across restarts and workers
DATABASES = ("mlflow", "mlflow_auth")
# Measured by `make bench ARGS="--only server"` (docs/scale-out.md, "The server under load"):
# - MLflow checks a password with scrypt, ~0.1 s of CPU, on every request unless it caches the
#   check: with the cache on, 32 jobs get ~9x the requests/s. A removed user or a changed password
#   then stops working within AUTH_CACHE_S on every worker (at once on the one that changed it).
# - A uvicorn worker serves up to 40 requests at once (anyio's thread limit); with SQLAlchemy's
#   default pool (5 + 10 connections) the others waited 30 s for a connection and failed, losing
#   points at 32 jobs. Each worker's two stores (runs, users) get a connection per thread, and
#   PostgreSQL enough connections for every worker.
AUTH_CACHE_S = 10
WORKERS = 2
THREADS_PER_WORKER = 40


def pool_env() -> dict[str, str]:
    """MLflow's SQLAlchemy pool: a connection for each request a worker serves at once."""
    return {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "10",
            "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": str(THREADS_PER_WORKER - 10)}


def max_connections(workers: int) -> int:
    """PostgreSQL's connection limit: both stores' pools in every worker, and room for tools."""
    return 2 * THREADS_PER_WORKER * workers + 20


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
        write_secret(secret, password)
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


def start_postgres(data: Path, host: str, port: int, connections: int = 100) -> None:
    options = f"-p {port} -c listen_addresses={host} -k {data} -c max_connections={connections}"
    subprocess.run(_as_owner([pg_tool("pg_ctl"), "-D", str(data), "-o", options, "-l", str(data / "server.log"),
                              "-w", "start"]), check=True)


def stop_postgres(data: Path) -> None:
    subprocess.run(_as_owner([pg_tool("pg_ctl"), "-D", str(data), "-m", "fast", "stop"]), check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def ensure_databases(port: int, password: str) -> None:
    """The runs' database and the users' and permissions' one, in the same cluster."""
    import psycopg2

    con = psycopg2.connect(host=PG_HOST, port=port, user="mlflow", password=password, dbname="postgres")
    con.autocommit = True
    with con.cursor() as cur:
        for name in DATABASES:
            cur.execute("select 1 from pg_database where datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(f"create database {name}")
    con.close()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def served_hosts(host: str, port: int, extra: str = "") -> list[str]:
    """The Host headers the server answers (MLflow's --allowed-hosts): the names and addresses
    it is reached by on this port, and the lab's own (a reverse proxy's name, --allowed-hosts)."""
    names = {"127.0.0.1", "localhost", "[::1]"}
    if not is_loopback(host):
        fqdn = socket.getfqdn()
        names |= {socket.gethostname(), fqdn}
        if host not in ("0.0.0.0", "::"):
            names.add(f"[{host}]" if ":" in host else host)
        else:
            try:
                names |= {info[4][0] for info in socket.getaddrinfo(fqdn, None, socket.AF_INET)}
            except OSError:
                pass
    hosts = sorted(f"{name}:{port}" for name in names)
    return hosts + [h.strip() for h in extra.split(",") if h.strip()]


def served_origins(hosts: list[str], extra: str = "") -> list[str]:
    """The origins whose pages may call the API (MLflow's --cors-allowed-origins): the UI's own."""
    return [f"http://{h}" for h in hosts] + [o.strip() for o in extra.split(",") if o.strip()]


def stored_secret(path: Path) -> str:
    """A random secret kept in a mode-600 file, made on first use."""
    if not path.exists():
        write_secret(path, secrets.token_urlsafe(32))
    return path.read_text().strip()


def auth_database_uri(pg_port: int) -> str:
    """No password in it: libpq takes PGPASSWORD from the server's environment."""
    return f"postgresql+psycopg2://mlflow@{PG_HOST}:{pg_port}/mlflow_auth"


def ensure_auth(home: Path, pg_port: int, cache_s: int = AUTH_CACHE_S) -> tuple[Path, str]:
    """(MLflow's auth config, the admin's password). The config holds no secret; the admin's
    password lives in <home>/server-admin.env. When that file is gone, the admin gets a new
    password (the users and permissions stay). `cache_s`: how long a worker trusts a checked
    password (MLflow's auth_cache_ttl_seconds; 0: it hashes every request's)."""
    config = home / AUTH_CONFIG
    config.write_text("[mlflow]\n"
                      "# every user reads every sweep; a sweep's creator manages it; others write only when granted\n"
                      "default_permission = READ\n"
                      f"database_uri = {auth_database_uri(pg_port)}\n"
                      f"admin_username = {ADMIN}\n"
                      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                      f"auth_cache_ttl_seconds = {cache_s}\n")
    secret = home / ADMIN_FILE
    if secret.exists():
        return config, read_secret_env(secret)["MLFLOW_TRACKING_PASSWORD"]
    password = secrets.token_urlsafe(24)
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(auth_database_uri(pg_port))
    if store.has_user(ADMIN):  # the file was lost: a new password, the same users
        store.update_user(ADMIN, password=password)
        print(f"{secret} was missing: the admin has a new password, written there", flush=True)
    write_secret_env(secret, ADMIN, password)
    return config, password


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m study.server", description=__doc__.splitlines()[0],
                                epilog="Users and permissions: python -m study.server user --help")
    p.add_argument("--host", default="127.0.0.1", help="MLflow's interface (default 127.0.0.1); PostgreSQL stays on 127.0.0.1")
    p.add_argument("--port", type=int, default=int(os.environ.get("STUDY_SERVER_PORT", 5001)))
    p.add_argument("--pg-port", type=int, default=int(os.environ.get("STUDY_PG_PORT", 5433)))
    p.add_argument("--home", default=project_root(), help="where the cluster's password, the admin's file and artifacts live")
    p.add_argument("--workers", type=int, default=WORKERS, help=f"uvicorn workers (default {WORKERS}; about one a core)")
    p.add_argument("--auth-cache-s", type=int, default=AUTH_CACHE_S,
                   help=f"how long a worker trusts a checked password (default {AUTH_CACHE_S}; 0: hash every request's)")
    p.add_argument("--no-auth", action="store_true", help="no users or permissions: refused unless --host is loopback")
    p.add_argument("--allowed-hosts", default="", help="more Host headers to answer, comma-separated (a reverse proxy's name)")
    p.add_argument("--cors-allowed-origins", default="", help="more origins allowed to call the API, comma-separated")
    a = p.parse_args(argv)
    if a.no_auth and not is_loopback(a.host):
        p.error(f"--no-auth with --host {a.host}: refused, a server without authentication listens on "
                "loopback only (--host 127.0.0.1); drop --no-auth to serve the network with users")
    return a


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["user"]:
        from study.record import users

        sys.exit(users.main(argv[1:]))
    a = parse(argv)
    home = Path(a.home).resolve()
    data = cluster_dir(home)
    password = ensure_cluster(home, data)
    start_postgres(data, PG_HOST, a.pg_port, max_connections(a.workers))
    try:
        ensure_databases(a.pg_port, password)
        os.environ["PGPASSWORD"] = password  # for the auth store opened here; never in a URI or a log
        artifacts = home / "server-artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        hosts = served_hosts(a.host, a.port, a.allowed_hosts)
        env = dict(os.environ, PGPASSWORD=password, **pool_env())
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", a.host, "--port", str(a.port),
               "--workers", str(a.workers), "--artifacts-destination", str(artifacts),
               "--backend-store-uri", f"postgresql+psycopg2://mlflow@{PG_HOST}:{a.pg_port}/mlflow",
               "--allowed-hosts", ",".join(hosts),
               "--cors-allowed-origins", ",".join(served_origins(hosts, a.cors_allowed_origins))]
        if a.no_auth:
            access = "no authentication (--no-auth, loopback only)"
        else:
            config, admin_password = ensure_auth(home, a.pg_port, a.auth_cache_s)
            cmd += ["--app-name", "basic-auth"]
            env |= {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN,
                    "MLFLOW_FLASK_SERVER_SECRET_KEY": stored_secret(home / SECRET_KEY_FILE),
                    "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password}  # the environment, never a command line
            access = (f"authentication on: the admin's credentials are in {home / ADMIN_FILE} "
                      f"(set -a; . {home / ADMIN_FILE}; set +a); users: make user-add NAME=...")
        print(f"MLflow tracking server on http://{a.host}:{a.port} (PostgreSQL on {PG_HOST}:{a.pg_port}, "
              f"artifacts in {artifacts}); {access}; sweeps: tracking=server", flush=True)
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
