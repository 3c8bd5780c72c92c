"""`make server` (MLflow over PostgreSQL, with MLflow's basic-auth app) against the real
servers: who gets in, whose sweep is whose, what a restart keeps, where no secret goes, and a
parallel sweep of 4 jobs recording into it with tracking=server."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study.record import server
from study.record.tracking import EPOCH_RETRY_S
from study.record.users import read_secret_env
from tests.conftest import ROOT, point_runs, wait_for_checkpoint

HAVE_POSTGRES = any((d / "pg_ctl").exists() for d in server.PG_BIN_DIRS) or shutil.which("pg_ctl")
needs_postgres = pytest.mark.skipif(not HAVE_POSTGRES, reason="PostgreSQL server programs (pg_ctl, initdb) are not "
                                    "installed; .ci/run installs them (apt-get install postgresql)")
TINY = ("model.width=0.25 model.depth=14 data.resolution=8 recipe.epochs=1 recipe.batch_size=32 data.synthetic_images=200 "
        "trainer.latency_repeats=1 trainer.progress=false trainer.measure_alone=false analysis.auto=false tracking=server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `python -m study.server` with its home; started, stopped and started again."""

    def __init__(self, home: Path, host: str = "127.0.0.1", name: str | None = None) -> None:
        """`host`: the interface it listens on; `name`: the host name clients reach it by."""
        self.home, self.port, self.pg_port = home, _free_port(), _free_port()
        self.host, self.name = host, name
        self.uri = f"http://{name or host}:{self.port}"
        self.log = home.parent / f"{home.name}-server.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        out = open(self.log, "a")
        named = ["--host", self.host] + (["--allowed-hosts", f"{self.name}:{self.port}"] if self.name else [])
        self.proc = subprocess.Popen([sys.executable, "-m", "study.server", "--home", str(self.home), "--port",
                                      str(self.port), "--pg-port", str(self.pg_port), *named], cwd=ROOT, stdout=out,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"{self.uri}/health", timeout=2).read() == b"OK":
                    return
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()[-3000:]
                time.sleep(1)
        pytest.fail("the tracking server did not answer within 180 s")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=60)

    def credentials(self, user: str = "admin") -> dict[str, str]:
        path = self.home / ("server-admin.env" if user == "admin" else f"users/{user}.env")
        return read_secret_env(path)

    def env(self, user: str | None, study_home: Path, **extra: str) -> dict[str, str]:
        # a user's shell: none of this pytest's credentials, nor the make variables of `make test ARGS=...`
        # (MAKEFLAGS would hand ARGS to every `make` a test runs)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")
               and k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "ARGS")}
        env |= {"STUDY_HOME": str(study_home), "STUDY_SERVER_PORT": str(self.port), **extra}
        if self.name:
            env["STUDY_SERVER"] = self.uri
        return env | (self.credentials(user) if user else {})

    def client(self, user: str = "admin") -> MlflowClient:
        os.environ.update(self.credentials(user))  # MLflow's client reads them per request
        return MlflowClient(tracking_uri=self.uri)


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("server")
    srv = Server(home)
    srv.start()
    saved = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_TRACKING_")}
    yield srv
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        os.environ.pop(k, None)
    os.environ.update(saved)
    srv.stop()
    shutil.rmtree(server.cluster_dir(home.resolve()), ignore_errors=True)


@pytest.fixture(scope="module")
def users(tracking_server):
    """alice and bob, added with the Make target; alice owns sweep 'alice_sweep' (one point)."""
    for name in ("alice", "bob"):
        done = _make(tracking_server, None, "user-add", f"NAME={name}", study_home=tracking_server.home)
        assert done.returncode == 0, done.stderr
        assert f"users/{name}.env" in done.stdout
    study_home = tracking_server.home.parent / "alice-home"
    done = _make(tracking_server, "alice", "sweep", "SWEEP=smoke", f"ARGS={TINY} sweep=alice_sweep", study_home=study_home)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return tracking_server


def _make(srv: Server, user: str | None, *args: str, study_home: Path | None = None, **extra: str):
    env = srv.env(user, study_home or srv.home.parent / f"{user}-home", **extra)
    return subprocess.run(["make", "-s", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def _status(srv: Server, path: str, user: str | None = None, method: str = "GET", body: bytes | None = None,
            headers: dict | None = None) -> int:
    request = urllib.request.Request(srv.uri + path, data=body, method=method, headers=dict(headers or {}))
    if user:
        c = srv.credentials(user)
        token = b64encode(f"{c['MLFLOW_TRACKING_USERNAME']}:{c['MLFLOW_TRACKING_PASSWORD']}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        return urllib.request.urlopen(request, timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code


def _listening() -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket, from /proc/net/tcp and tcp6."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state != "0A":  # LISTEN
                    continue
                addr, port = local.split(":")
                raw = bytes.fromhex(addr)
                if len(raw) == 4:
                    ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
                else:  # four little-endian 32-bit words
                    ip = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
                found.add((ip, int(port, 16)))
    return found


def test_no_auth_beyond_loopback_is_refused_before_anything_starts(tmp_path):
    done = subprocess.run([sys.executable, "-m", "study.server", "--home", str(tmp_path), "--host", "0.0.0.0",
                           "--no-auth"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--no-auth with --host 0.0.0.0: refused" in done.stderr and "loopback only" in done.stderr
    assert list(tmp_path.iterdir()) == []  # no cluster, no file


def test_served_hosts_name_what_the_server_serves():
    assert server.served_hosts("127.0.0.1", 5001) == ["127.0.0.1:5001", "[::1]:5001", "localhost:5001"]
    lab = server.served_hosts("0.0.0.0", 5001, "mlflow.lab.org")
    assert f"{socket.gethostname()}:5001" in lab and lab[-1] == "mlflow.lab.org" and "*" not in lab
    assert server.served_origins(["localhost:5001"], "https://mlflow.lab.org") == [
        "http://localhost:5001", "https://mlflow.lab.org"]


def test_the_servers_secrets_in_a_checkout_never_show_in_git_status(tmp_path):
    """make server's home is the checkout by default: `git add -A` there must not commit the
    admin's password, a user's, the database's or the UI's key."""
    from study.record.users import ADMIN_FILE, user_file, write_secret, write_secret_env

    if not shutil.which("git"):
        pytest.skip("git is not installed")
    shutil.copy(ROOT / ".gitignore", tmp_path / ".gitignore")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    write_secret(tmp_path / "postgres.password", "pg")  # what ensure_cluster writes
    write_secret_env(tmp_path / ADMIN_FILE, "admin", "secret")
    write_secret_env(user_file(tmp_path, "alice"), "alice", "secret")
    server.stored_secret(tmp_path / server.SECRET_KEY_FILE)
    server.ensure_auth(tmp_path, 5433)  # the admin's file exists: no database is asked
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file() and ".git/" not in
               p.as_posix()}
    assert {"postgres.password", ADMIN_FILE, "users/alice.env", server.SECRET_KEY_FILE, server.AUTH_CONFIG} < written
    listed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=tmp_path,
                            capture_output=True, text=True, check=True).stdout.split()
    assert listed == ["??", ".gitignore"]


@needs_postgres
def test_server_and_database_listen_on_loopback_only(tracking_server):
    listening = _listening()
    for p in (tracking_server.port, tracking_server.pg_port):
        assert {ip for ip, q in listening if q == p} == {"127.0.0.1"}, p


@needs_postgres
def test_nobody_gets_in_without_credentials_and_the_admin_does(tracking_server):
    admin_file = tracking_server.home / "server-admin.env"
    assert stat.S_IMODE(admin_file.stat().st_mode) == 0o600
    lines = admin_file.read_text().splitlines()
    assert [line.split("=")[0] for line in lines] == ["MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"]
    search = "/api/2.0/mlflow/experiments/search?max_results=1"
    assert _status(tracking_server, search) == 401
    assert _status(tracking_server, search, "admin") == 200
    # a page of another site may not write, and a name the server does not serve is refused
    assert _status(tracking_server, "/api/2.0/mlflow/experiments/create", "admin",
                   headers={"Origin": "http://evil.example", "Content-Type": "application/json"},
                   method="POST", body=b'{"name": "x"}') == 403
    assert _status(tracking_server, search, "admin", headers={"Host": f"evil.example:{tracking_server.port}"}) == 403
    log = tracking_server.log.read_text()
    assert str(admin_file) in log and lines[1].split("=", 1)[1] not in log


@needs_postgres
@pytest.mark.slow
def test_missing_or_wrong_credentials_fail_fast_and_record_nothing(users, tmp_path):
    for extra, said in (({}, "no credentials were given"),
                        ({"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "wrong"},
                         "refused the credentials of user 'alice'")):
        started = time.monotonic()
        done = _make(users, None, "point", "SWEEP=smoke", f"POINT={TINY} sweep=nobody_sweep", study_home=tmp_path, **extra)
        assert done.returncode == 2 and said in done.stderr, done.stderr[-2000:]
        assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in done.stderr
        assert "Traceback" not in done.stderr and time.monotonic() - started < 60
    assert users.client().get_experiment_by_name("sweep/nobody_sweep") is None
    assert not list(tmp_path.glob("**/*.ckpt")) and not (tmp_path / "mlflow.db").exists()


@needs_postgres
@pytest.mark.slow
def test_a_user_reads_another_users_sweep_but_cannot_write_it_unless_granted(users, tmp_path):
    bob = users.client("bob")
    exp = bob.get_experiment_by_name("sweep/alice_sweep")
    assert exp is not None and len(point_runs(tmp_path, "alice_sweep", uri=users.uri)) == 1  # bob reads it
    with pytest.raises(Exception, match="403"):
        bob.create_run(exp.experiment_id)
    with pytest.raises(Exception, match="403"):
        bob.delete_experiment(exp.experiment_id)
    done = _make(users, "bob", "point", "SWEEP=smoke", f"POINT={TINY} sweep=alice_sweep model.width=0.5", study_home=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "belongs to another user; 'bob' may read it but not record into it" in done.stderr
    assert "make user-grant NAME=bob SWEEP=alice_sweep PERMISSION=EDIT" in done.stderr
    assert len(point_runs(tmp_path, "alice_sweep", uri=users.uri)) == 1  # nothing recorded
    done = _make(users, None, "user-grant", "NAME=bob", "SWEEP=alice_sweep", "PERMISSION=EDIT",
                 study_home=users.home)
    assert done.returncode == 0 and "EDIT on sweep 'alice_sweep'" in done.stdout, done.stderr
    bob.set_terminated(bob.create_run(exp.experiment_id).info.run_id)  # granted: bob writes
    # a sweep bob creates is his: alice reads it, cannot write it
    bob_exp = bob.create_experiment("sweep/bob_sweep")
    with pytest.raises(Exception, match="403"):
        users.client("alice").create_run(bob_exp)


@needs_postgres
@pytest.mark.slow
def test_credentials_that_stop_working_mid_point_keep_the_training(users, tmp_path):
    done = _make(users, None, "user-add", "NAME=carol", study_home=users.home)
    assert done.returncode == 0, done.stderr
    admin = users.client()
    stop = threading.Event()

    def remove_carol_once_her_first_epoch_is_logged():
        while not stop.is_set():
            exp = admin.get_experiment_by_name("sweep/carol_sweep")
            runs = admin.search_runs([exp.experiment_id], "tags.point_key != ''") if exp else []
            if runs and runs[0].data.metrics:
                subprocess.run([sys.executable, "-m", "study.server", "user", "--home", str(users.home),
                                "--server", users.uri, "remove", "carol"], cwd=ROOT, check=True, capture_output=True)
                return
            time.sleep(0.2)

    remover = threading.Thread(target=remove_carol_once_her_first_epoch_is_logged)
    remover.start()
    # long enough to outlast the servers' password cache (server.AUTH_CACHE_S) after the removal
    point = TINY.replace("recipe.epochs=1", "recipe.epochs=60") + " sweep=carol_sweep data.synthetic_images=2000"
    done = _make(users, "carol", "point", "SWEEP=smoke", f"POINT={point}", study_home=tmp_path)
    stop.set()
    remover.join()
    out = done.stdout + done.stderr
    assert "NOT RECORDED" in out and "refused the credentials" in out, out[-3000:]
    assert list(tmp_path.glob("**/*.record.json")), "the training is kept on disk for the next run to record"
    assert "Traceback" not in out


@needs_postgres
@pytest.mark.slow
def test_no_password_in_the_store_the_outputs_the_logs_or_the_process_list(users, tmp_path):
    secrets = [users.credentials(u)["MLFLOW_TRACKING_PASSWORD"] for u in ("admin", "alice", "bob")]
    secrets.append((users.home / "postgres.password").read_text().strip())
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    dumps = ""
    for database in server.DATABASES:
        dumps += subprocess.run(server._as_owner([server.pg_tool("pg_dump"), "-h", server.PG_HOST, "-p",
                                                  str(users.pg_port), "-U", "mlflow", database]),
                                env=dict(os.environ, PGPASSWORD=secrets[-1]), capture_output=True, text=True,
                                check=True).stdout
    assert "alice_sweep" in dumps and "alice" in dumps  # the dump is real
    outputs = ""
    for folder in (users.home.parent / "alice-home", users.home / "server-artifacts"):
        outputs += "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file()
                           and p.suffix in (".yaml", ".json", ".log", ".txt", ".md", ".html", ".csv"))
    logs = users.log.read_text() + "".join(p.read_text(errors="replace")
                                           for p in server.cluster_dir(users.home.resolve()).glob("*.log"))
    for secret in secrets:
        for where, text in (("the process list", processes), ("the store", dumps), ("the outputs", outputs),
                            ("the logs", logs)):
            assert secret not in text, where


@needs_postgres
@pytest.mark.slow
def test_a_restart_keeps_users_and_permissions_and_a_lost_admin_file_gets_a_new_password(users):
    before = users.credentials()
    users.stop()
    (users.home / "server-admin.env").unlink()
    users.start()
    after = users.credentials()
    assert after["MLFLOW_TRACKING_PASSWORD"] != before["MLFLOW_TRACKING_PASSWORD"]
    assert _status(users, "/api/2.0/mlflow/experiments/search?max_results=1", "admin") == 200
    bob = users.client("bob")  # his password and his grant on alice's sweep survived
    exp = bob.get_experiment_by_name("sweep/alice_sweep")
    bob.set_terminated(bob.create_run(exp.experiment_id).info.run_id)
    with pytest.raises(Exception, match="403"):
        users.client("alice").create_run(bob.get_experiment_by_name("sweep/bob_sweep").experiment_id)


@needs_postgres
@pytest.mark.slow
def test_a_parallel_sweep_loses_nothing_when_postgresql_and_mlflow_restart_mid_sweep(users, tmp_path):
    """4 points in 2 jobs into the server with tracking=server; after the first checkpoint the
    server (MLflow and its PostgreSQL) stops for longer than an epoch's log waits, and starts
    again. Training goes on meanwhile; every point ends FINISHED once, every epoch recorded once,
    with its artifacts, and nothing waits on disk to be recorded."""
    grid = ("model.width=0.25,0.5 model.depth=14 data.resolution=12,16 recipe.epochs=12 recipe.batch_size=32 "
            "data.synthetic_images=3000 trainer.latency_repeats=1 trainer.progress=false tracking=server sweep=served")
    env = users.env("alice", tmp_path, PYTHONUNBUFFERED="1")
    sweep = subprocess.Popen(["make", "-s", "sweep", "SWEEP=smoke", "JOBS=2", f"ARGS={grid}"], cwd=ROOT, env=env,
                             text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_checkpoint(tmp_path, sweep)
        users.stop()  # MLflow, then PostgreSQL
        time.sleep(EPOCH_RETRY_S + 2)
        users.start()
        out, _ = sweep.communicate(timeout=900)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    assert sweep.returncode == 0, out[-3000:]
    assert "4 points: 4 finished, 0 skipped, 0 failed" in out and "logging paused, training goes on" in out, out[-3000:]
    assert users.credentials("alice")["MLFLOW_TRACKING_PASSWORD"] not in out
    client = users.client("alice")
    runs = point_runs(tmp_path, "served", uri=users.uri)
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["point_key"] for r in runs}) == 4
    for run in runs:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
        assert steps == list(range(1, 13)), "every epoch recorded once"
        assert {"top1", "flops", "latency_ms"} <= run.data.metrics.keys()
        assert {"record.json", "config.yaml"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert not list(tmp_path.glob("checkpoints/*/*.record.json"))  # nothing left to record later
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to the local store
