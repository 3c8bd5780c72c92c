"""`make server` (MLflow tracking server over PostgreSQL, both on 127.0.0.1) and a parallel
sweep of 4 jobs recording into it with tracking=server."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from study import server
from tests.conftest import ROOT, point_runs

HAVE_POSTGRES = any((d / "pg_ctl").exists() for d in server.PG_BIN_DIRS) or shutil.which("pg_ctl")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not HAVE_POSTGRES, reason="PostgreSQL server programs (pg_ctl, initdb) are not "
                                "installed; .ci/run installs them (apt-get install postgresql)")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("server")
    port, pg_port = _free_port(), _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "study.server", "--home", str(home), "--port", str(port),
                             "--pg-port", str(pg_port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read() == b"OK":
                break
        except OSError:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            time.sleep(1)
    else:
        pytest.fail("the tracking server did not answer within 180 s")
    yield home, port, pg_port, proc
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    shutil.rmtree(server.cluster_dir(home.resolve()), ignore_errors=True)


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


def test_server_and_database_listen_on_loopback_only(tracking_server):
    _, port, pg_port, _ = tracking_server
    listening = _listening()
    for p in (port, pg_port):
        assert {ip for ip, q in listening if q == p} == {"127.0.0.1"}, p


def test_parallel_sweep_records_into_the_server(tracking_server, tmp_path):
    home, port, _, _ = tracking_server
    password = (home / "postgres.password").read_text().strip()
    grid = ("model.width=0.25,0.5 model.depth=14 data.resolution=8,12 seed=0,1 recipe.epochs=1 recipe.batch_size=32 "
            "data.synthetic_images=200 trainer.latency_repeats=1 trainer.progress=false tracking=server sweep=served")
    env = dict(os.environ, STUDY_HOME=str(tmp_path), STUDY_SERVER_PORT=str(port))
    done = subprocess.run(["make", "sweep", "SWEEP=smoke", "JOBS=4", f"ARGS={grid}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "8 points: 8 finished, 0 skipped, 0 failed" in done.stdout
    assert password not in done.stdout + done.stderr
    client = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
    runs = point_runs(tmp_path, "served", uri=f"http://127.0.0.1:{port}")
    assert len(runs) == 8 and {r.info.status for r in runs} == {"FINISHED"}
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"record.json", "config.yaml"} <= artifacts
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to the local store
