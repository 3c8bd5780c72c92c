"""Shared fixtures: Hydra composition of conf/ and sweeps/, a tiny config, a temp store."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from study.record.contract import find_experiment
from study.settings import config

ROOT = Path(__file__).resolve().parents[1]
CONF, SWEEPS = ROOT / "conf", ROOT / "sweeps"
SHARED_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"

# A point small enough to train in about a second on the synthetic set.
TINY = ["data=synthetic", "data.synthetic_images=400", "data.resolution=12", "model.depth=14",
        "model.width=0.25", "recipe.epochs=2", "recipe.batch_size=32", "recipe.warmup_epochs=0.5",
        "trainer.latency_repeats=2", "trainer.progress=false"]


def compose_cfg(name: str = "config", overrides: list[str] = (), hydra_cfg: bool = False):
    """Compose a config from conf/ (or a sweep from sweeps/, which builds on conf/)."""
    config.register()
    GlobalHydra.instance().clear()
    is_sweep = (SWEEPS / f"{name}.yaml").exists()
    extra = [f"hydra.searchpath=[file://{CONF}]"] if is_sweep else []
    with initialize_config_dir(config_dir=str(SWEEPS if is_sweep else CONF), version_base="1.3"):
        return compose(name, overrides=[*overrides, *extra], return_hydra_config=hydra_cfg)


@pytest.fixture
def study_home(tmp_path, monkeypatch) -> Path:
    """A temporary STUDY_HOME: the SQLite store and outputs of subprocess runs land here."""
    monkeypatch.setenv("STUDY_HOME", str(tmp_path))
    return tmp_path


def run_cli(*args: str, home: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m study.run ARGS` as a user would, with STUDY_HOME=home (+ `env`)."""
    env = dict(os.environ, STUDY_HOME=str(home), PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "study.run", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def point_runs(home: Path, sweep: str, uri: str | None = None) -> list:
    """The point runs (not the parent) of a sweep, from the store under `home` or at `uri`."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri or f"sqlite:///{home}/mlflow.db")
    exp = find_experiment(client, sweep)
    return [r for r in client.search_runs([exp.experiment_id], max_results=1000) if r.data.tags.get("point_key")]


def wait_for_checkpoint(home: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Wait until a point under `home` has written its first checkpoint (after its first epoch),
    failing with the process's output if it ends first."""
    import time

    deadline = time.monotonic() + timeout
    while not list(home.glob("checkpoints/*/*.pt")):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.1)
