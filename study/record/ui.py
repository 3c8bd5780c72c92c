"""`make ui`: MLflow's UI over the study's store, with a link per sweep that opens its runs.

    python -m study.record.ui --store sqlite:///mlflow.db --port 5000

Each printed link opens the sweep on the study's saved view (study.record.view: its columns, groups
and charts) in MLflow 3's "Model training" runs table, not its GenAI overview of traces.
Experiments recorded by earlier versions (named after the bare sweep) are renamed and tagged
first, as a sweep would, and get the view; a store this user may not write keeps what it has.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from study.record import view
from study.record.contract import PARENT_ROLE, runs_link
from study.record.tracking import mlflow_tracker


def sweep_links(uri: str, base: str) -> list[tuple[str, int, str]]:
    """(sweep, point runs, link) of every sweep in the store, by name."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = []
    for exp in client.search_experiments():
        sweep = exp.tags.get("sweep")
        if sweep is None:  # recorded before experiments were tagged?
            parents = client.search_runs([exp.experiment_id], f"tags.role = '{PARENT_ROLE}'", max_results=1)
            if not parents or parents[0].data.tags.get("sweep") != exp.name:
                continue
            sweep = exp.name
            mlflow_tracker(uri, sweep, None)  # renames and tags it
        points = len(client.search_runs([exp.experiment_id], "tags.point_key != ''", max_results=50000))
        _install(client, exp.experiment_id, sweep)
        found.append((sweep, points, runs_link(base, exp.experiment_id)))
    return sorted(found)


def _install(client, experiment_id: str, sweep: str) -> None:
    """The study's view on a sweep's experiment; a store that refuses the write (another
    user's sweep on a server) is left as it is, and the link still opens its runs."""
    try:
        view.install(client, experiment_id)
    except Exception as e:
        print(f"note: sweep {sweep!r} keeps the view it has ({type(e).__name__}: {str(e).splitlines()[0][:200]})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.record.ui", description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True, help="tracking URI of the store (sqlite:///.../mlflow.db)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    a = p.parse_args(argv)
    base = f"http://{a.host}:{a.port}"
    db = a.store.removeprefix("sqlite:///")
    links = sweep_links(a.store, base) if not a.store.startswith("sqlite:") or Path(db).exists() else []
    if links:
        print("Open a sweep's runs (the study's view in MLflow's 'Model training' runs table):")
        for sweep, points, link in links:
            print(f"  {sweep:<20} {points:>5} point runs  {link}")
    else:
        print("No sweeps recorded yet: `make sweep` trains the default study.")
    print(f"MLflow UI on {base} (Ctrl-C stops it)", flush=True)
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    os.execv(mlflow, [mlflow, "ui", "--backend-store-uri", a.store, "--host", a.host, "--port", str(a.port)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
