"""Where a point's code came from: the git commit of the code that ran (not of the store's
folder), whether its working tree had uncommitted changes, and the versions of the packages
that decide what is trained and recorded. Logged as tags of every point run."""
from __future__ import annotations

import subprocess
from functools import lru_cache
from importlib import metadata

from study.settings.config import CODE_ROOT

PACKAGES = ("torchvision", "timm", "mlflow", "optuna", "hydra-core")  # and torch, with its build


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=CODE_ROOT)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@lru_cache(maxsize=1)
def tags() -> dict[str, str]:
    """{'git_sha': ..., 'git_dirty': 'true'|'false'|'unknown', 'version.torch': ..., ...}."""
    # Only this project's own checkout: an installed copy inside another repository is not it.
    sha = _git("rev-parse", "HEAD") if _git("rev-parse", "--show-toplevel") == str(CODE_ROOT) else None
    status = _git("status", "--porcelain", "--untracked-files=no") if sha else None
    versions = {}
    for name in PACKAGES:
        try:
            versions[f"version.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[f"version.{name}"] = "absent"
    import torch

    versions["version.torch"] = torch.__version__  # with its build: '2.14.1+cu130'
    return {"git_sha": sha or "unknown",
            "git_dirty": "unknown" if status is None else str(bool(status)).lower(), **versions}
