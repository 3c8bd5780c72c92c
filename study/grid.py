"""A grid point's identity: which settings are semantic, its key, its display name,
and the expansion of a sweep's declared grid into the overrides of each point."""
from __future__ import annotations

import hashlib
import json
from typing import Any

from study.config import StudyConfig, flatten

# Settings that do not change what is trained or measured as a result: where and how fast
# it runs, where it is recorded, and bookkeeping. Everything else is semantic.
NON_SEMANTIC = frozenset({
    "data.root", "data.download",
    "trainer.device", "trainer.channels_last", "trainer.compile", "trainer.threads", "trainer.eval_batch_size",
    "trainer.latency_batch_size", "trainer.latency_repeats", "trainer.progress",
    "trainer.deterministic", "trainer.checkpoints", "trainer.keep_checkpoints",
    "tracking.uri", "tracking.artifact_root",
    "sweep", "force", "vars", "seeds",
})


def semantic_settings(study: StudyConfig) -> dict[str, Any]:
    """Every setting that defines the grid point, flattened ('model.width': 0.5, ...)."""
    return {k: v for k, v in flatten(study).items() if k not in NON_SEMANTIC}


def point_key(study: StudyConfig) -> str:
    """Stable hash of the semantic settings but the seed: equal settings give equal keys across
    runs, machines and the order in which overrides were written; the seeds of one grid point
    share it."""
    settings = {k: v for k, v in semantic_settings(study).items() if k != "seed"}
    canonical = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def run_key(study: StudyConfig) -> str:
    """One training of a grid point: its key and seed ('3f2a...-s1'); what skip, resume and
    checkpoints go by."""
    return f"{point_key(study)}-s{study.seed}"


def display_name(study: StudyConfig, choices: list[str] = ()) -> str:
    """Short human name of a point: 'w=0.5 d=26 r=20 e=8' (+ seed when not 0), then the
    config-group choices a sweep varies ('ladder=03_ema'), which the numbers do not show."""
    name = (f"w={study.model.width:g} d={study.model.depth} "
            f"r={study.data.resolution} e={study.recipe.epochs}")
    return " ".join([name + (f" s={study.seed}" if study.seed else ""), *choices])


def group_choices(overrides: list[str], swept: set[str]) -> list[str]:
    """The config-group selections a sweep varies, among a job's overrides: 'ladder=03_ema'
    when `swept` (the keys of hydra.sweeper.params) has 'ladder'."""
    keys = {k.lstrip("+~") for k in swept if "." not in k}
    return [o.lstrip("+~") for o in overrides if o.split("=")[0].lstrip("+~") in keys]


def expand(sweeper_params: dict[str, str], task_overrides: list[str]) -> list[list[str]]:
    """The override list of every job, in launch order, exactly as Hydra's basic sweeper
    builds it: the sweep file's `hydra.sweeper.params` first, then the command line."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    declared = [f"{k}={v}" for k, v in sweeper_params.items()] + list(task_overrides)
    parsed = OverridesParser.create().parse_overrides(declared)
    batches = BasicSweeper.split_arguments(parsed, None)
    return [list(job) for batch in batches for job in batch]
