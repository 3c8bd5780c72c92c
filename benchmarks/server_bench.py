"""The shared server under load (issue 42), opt-in: `make bench ARGS="--only server"` (about
9 minutes on 2 cores).

`python -m study.server` (MLflow over PostgreSQL, authentication on) is started at the SETTINGS
below: 1, 2 and 4 workers, MLflow's cache of checked passwords off and on. Against each, N
concurrent point jobs (N = 1, 8, 32; separate processes, each with its own client and the
admin's credentials) record one point each, at the same moment, through the project's own tracker
(study.record.tracking.MlflowTracker): open the sweep, look for a finished run, create the run
with its params and tags, log every epoch's metrics, then
the final metrics, record.json and config.yaml, and mark it FINISHED. What each job sends is the
record of a real point, trained once at the start (20 epochs, synthetic data). Every HTTP
request is timed in the job (requests.Session.request): requests/s over the round's wall time,
p50/p99 latency, and errors (a refused connection or a 5xx; the tracker retries them) against N.

Last, with the chosen worker count, 16 jobs record while the server (MLflow and PostgreSQL) is
stopped and started again: how long the jobs saw it gone, and whether every point was recorded
once. The clients' retry budget (study.record.tracking.RETRY_FOR_S) must outlast that outage.

The jobs share the machine's cores with the server, as they would not on a cluster: on a small
machine the figures are a floor on what the server serves."""
from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (uvicorn workers, seconds a worker trusts a checked password): MLflow hashes a password with
# scrypt (about 0.1 s of CPU) on every request unless its auth cache is on
SETTINGS = ((2, 0), (1, 10), (2, 10), (4, 10))
JOBS = (1, 8, 32)
EPOCHS = 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _template(home: Path) -> dict:
    """The run record of one real point (params, tags, epochs' metrics, final metrics, artifacts)."""
    from mlflow.tracking import MlflowClient

    from study.record.contract import find_experiment

    subprocess.run([sys.executable, "-m", "study.run", "data=synthetic", "model.width=0.25", "model.depth=14",
                    "data.resolution=8", f"recipe.epochs={EPOCHS}", "data.synthetic_images=200", "sweep=template",
                    "trainer.latency_repeats=1", "trainer.progress=false", "trainer.measure_alone=false",
                    "analysis.auto=false"], cwd=ROOT, env=dict(os.environ, STUDY_HOME=str(home)), check=True,
                   stdout=subprocess.DEVNULL)
    client = MlflowClient(f"sqlite:///{home}/mlflow.db")
    (run,) = [r for r in client.search_runs([find_experiment(client, "template").experiment_id])
              if r.data.tags.get("point_key")]
    rid = run.info.run_id
    history: dict[int, dict[str, float]] = {}
    for key in run.data.metrics:
        for m in client.get_metric_history(rid, key):
            if m.step > 0:
                history.setdefault(m.step, {})[key] = m.value
    artifacts = {}
    for name in ("config.yaml", "record.json"):
        text = Path(client.download_artifacts(rid, name, str(home))).read_text()
        artifacts[name] = text
    return {"params": dict(run.data.params), "epochs": sorted(history.items()),
            "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
            "metrics": {k: v for k, v in run.data.metrics.items() if k not in {m for e in history.values() for m in e}},
            "artifacts": artifacts}


_CALLS: list = []


def _warm() -> None:
    """A job process: mlflow imported and every HTTP request it sends timed, before any round."""
    import mlflow.tracking  # noqa: F401
    import requests

    import study.record.tracking  # noqa: F401

    original = requests.Session.request

    def timed(self, method, url, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            response = original(self, method, url, *args, **kwargs)
        except Exception as e:
            _CALLS.append((time.time(), time.perf_counter() - t0, type(e).__name__))
            raise
        failed = response.status_code >= 500 and str(response.status_code)
        _CALLS.append((time.time(), time.perf_counter() - t0, failed))
        return response

    requests.Session.request = timed


def _job(uri: str, sweep: str, index: int, record: dict, credentials: dict, start_at: float) -> dict:
    """One point job: the tracker's calls for one point, as study.point.lifecycle makes them."""
    from study.record.tracking import MlflowTracker

    os.environ.update(credentials)
    time.sleep(max(0.0, start_at - time.time()))
    _CALLS.clear()
    t0 = time.perf_counter()
    try:
        tracker = MlflowTracker(uri, sweep)
        key = f"{record['tags'].get('run_key', 'k')}-{index}"
        tracker.finished_run(key)
        tracker.start_point(f"job-{index}", record["params"],
                            record["tags"] | {"run_key": key, "point_key": f"{key}-p"})
        for epoch, metrics in record["epochs"]:
            tracker.log_epoch(epoch, metrics)
        tracker.finish_point(record["metrics"], record["artifacts"])
        done = True
    except Exception as e:  # the retry budget ran out: the point's record would be lost
        print(f"job {index}: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
        done = False
    return {"calls": list(_CALLS), "done": done, "wall": time.perf_counter() - t0}


class _Server:
    def __init__(self, home: Path, workers: int, cache_s: int) -> None:
        self.home, self.workers, self.cache_s, self.port = home, workers, cache_s, _free_port()
        self.pg_port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "study.server", "--home", str(self.home), "--port",
                                      str(self.port), "--pg-port", str(self.pg_port), "--workers", str(self.workers),
                                      "--auth-cache-s", str(self.cache_s)],
                                     cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        while time.perf_counter() - t0 < 180:
            try:
                if urllib.request.urlopen(f"{self.uri}/health", timeout=2).read() == b"OK":
                    return time.perf_counter() - t0
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("the server did not answer within 180 s")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=60)

    def credentials(self) -> dict:
        from study.record.users import read_secret_env

        return read_secret_env(self.home / "server-admin.env")


def _round(pool, server: _Server, sweep: str, n: int, record: dict, during=None) -> dict:
    """n jobs at once; their requests' latencies, errors and wall time."""
    from study.record.tracking import MlflowTracker

    os.environ.update(server.credentials())
    MlflowTracker(server.uri, sweep)  # the launching process opens the sweep first, as a sweep does
    start_at = time.time() + 1.0
    pending = pool.starmap_async(_job, [(server.uri, sweep, i, record, server.credentials(), start_at)
                                        for i in range(n)], chunksize=1)
    if during:
        time.sleep(1.0)
        during()
    results = pending.get(timeout=900)
    calls = [c for r in results for c in r["calls"]]
    stamps = [c[0] for c in calls]
    latencies = sorted(c[1] for c in calls)
    failed = [c[0] for c in calls if c[2]]
    kinds = Counter(c[2] for c in calls if c[2])
    return {"n": n, "requests": len(calls), "rps": len(calls) / (max(stamps) - start_at) if stamps else 0.0,
            "p50": 1000 * statistics.median(latencies), "p99": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
            "errors": len(failed), "kinds": ", ".join(f"{k} x{n}" for k, n in kinds.items()),
            "lost": sum(not r["done"] for r in results),
            "outage": (max(failed) - min(failed)) if failed else 0.0, "wall": max(r["wall"] for r in results)}


def bench_server(args) -> list[tuple]:
    from study.record import server as servers
    from study.record.tracking import RETRY_FOR_S

    if not any((d / "pg_ctl").exists() for d in servers.PG_BIN_DIRS) and not shutil.which("pg_ctl"):
        return [("server under load", "skipped: no PostgreSQL", None, None, None, "apt-get install postgresql")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        record = _template(Path(tmp, "template"))
        per_point = len(record["epochs"])
        context = multiprocessing.get_context("spawn")
        with context.Pool(max(JOBS), initializer=_warm) as pool:
            pool.map(time.sleep, [0.5] * max(JOBS), chunksize=1)  # every process warm
            best = {}
            for workers, cache_s in SETTINGS:
                srv = _Server(Path(tmp, f"w{workers}c{cache_s}"), workers, cache_s)
                srv.start()
                try:
                    for n in JOBS:
                        r = _round(pool, srv, f"load_w{workers}_c{cache_s}_n{n}", n, record)
                        best[workers, cache_s] = r["rps"]
                        rows.append((f"workers {workers}, cache {cache_s} s, {n} jobs", f"{r['requests']} requests",
                                     r["rps"], None, None, f"req/s; p50 {r['p50']:.0f} ms, p99 {r['p99']:.0f} ms, "
                                     f"errors {r['errors']} ({r['kinds'] or 'none'}), points lost {r['lost']}"))
                        print(*rows[-1], file=sys.stderr, flush=True)
                finally:
                    srv.stop()
                    shutil.rmtree(servers.cluster_dir(srv.home.resolve()), ignore_errors=True)
            chosen = max(best, key=best.get)
            rows.append(("settings for 32 jobs", "the most req/s at 32 jobs", best[chosen], best[SETTINGS[0]],
                         best[chosen] / best[SETTINGS[0]], f"workers {chosen[0]}, cache {chosen[1]} s; "
                         + ", ".join(f"{w}/{c} s: {v:.0f}" for (w, c), v in best.items())))
            srv = _Server(Path(tmp, "restart"), *chosen)
            srv.start()
            try:
                restarts = []

                def restart():
                    srv.stop()
                    restarts.append(srv.start())

                r = _round(pool, srv, "load_restart", 16, record, during=restart)
            finally:
                srv.stop()
                shutil.rmtree(servers.cluster_dir(srv.home.resolve()), ignore_errors=True)
            rows.append(("restart mid-load, 16 jobs", f"workers {chosen[0]}, cache {chosen[1]} s", r["outage"],
                         RETRY_FOR_S, r["outage"] / RETRY_FOR_S,
                         f"s the jobs saw it gone (restart {restarts[0]:.1f} s) "
                         f"against the retry budget; points lost {r['lost']} of 16 ({per_point} epochs each)"))
    return rows
