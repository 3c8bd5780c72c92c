"""A grid point's identity: which settings are semantic, its key, its display name,
and the expansion of a sweep's declared grid into the overrides of each point.

The point-key contract (key version 1). Every finished run in every user's store is found
again by its key, so the key changes only when what is trained or measured changes:

1. The key is the first 16 hex digits of the SHA-256 of the JSON (sorted keys) of the keyed
   settings and their values; the seed is not keyed (the seeds of a point share its key, the
   run key adds it: '<key>-s<seed>').
2. Keyed are the settings in KEYED, always, and nothing in NON_SEMANTIC (where and how fast a
   point runs, where it is recorded, bookkeeping).
3. tune.* is keyed only when the point is tuned (tune.trials > 0): an untuned point trains the
   same whatever the tuning block says. tune.storage is never keyed (where trials are kept,
   and it may hold a credential).
4. A setting added to the schema after version 1 goes into ADDED with its neutral value, the
   value that trains exactly what was trained before it existed. It is keyed only when it
   differs from that value, so an upgrade leaves every existing key unchanged.
   tests/test_grid.py fails for a semantic setting found in neither table, and pins golden keys.
   A neutral value can be a test of the whole point: a setting that only matters together
   with another (the EMA's reference batch, when the EMA is off) is neutral wherever it
   cannot change what is trained.
5. A version that changes what a setting's value trains keys the derived quantity for the
   values it changed, and only for them (REDEFINED): depths 300 and 400 took the paper's
   layouts in place of interpolated ones, so their keys carry `model.blocks_per_stage`.
6. What a point trained on is keyed, where it lies is not: `data.root` is not keyed, and an
   image folder's contents are, as `data.fingerprint` (study.settings.identity; added after
   version 1, null for the named sets, so their keys are unchanged). A run recorded under the
   key an image-folder point had before fingerprints (`before_fingerprints`) is taken over by
   the point only when the folder it trained on is at hand and has the point's fingerprint;
   otherwise it is reported and left alone (study.point.lifecycle).
7. Stores written before this contract (key version 0: every setting but NON_SEMANTIC, tune.*
   included) are recognised: `legacy_run_key` computes a point's version-0 key, and the point
   lifecycle re-tags such runs with the current key when it meets them (study.point.lifecycle). A point
   that could not have existed then (a setting added since that is not neutral, a redefined
   value) has no version-0 key.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

from study.settings.config import StudyConfig, flatten
from study.settings.family import BLOCKS_PER_STAGE

KEY_VERSION = 1

NON_SEMANTIC = frozenset({
    "data.root", "data.download", "data.loader", "data.memory_budget_gb", "data.workers",
    "trainer.device", "trainer.channels_last", "trainer.compile", "trainer.threads", "trainer.eval_batch_size",
    "trainer.latency_batch_size", "trainer.latency_repeats", "trainer.progress", "trainer.measure_alone",
    "trainer.deterministic", "trainer.checkpoints", "trainer.keep_checkpoints",
    "tracking.uri", "tracking.artifact_root", "tracking.retry_s",
    "sweep", "force", "vars", "seeds", "tune.storage", "analysis.auto", "analysis.replicates",
})

# Keyed in every point (key version 1). Never remove or rename one: that changes every key.
KEYED = frozenset({
    "model.depth", "model.width", "model.se", "model.se_ratio", "model.resnet_d",
    "data.name", "data.resolution", "data.minival_fraction", "data.test_fraction", "data.split_seed",
    "data.max_train_images", "data.augment", "data.crop_padding", "data.synthetic_images",
    "data.synthetic_classes", "data.synthetic_size",
    "recipe.epochs", "recipe.batch_size", "recipe.lr_per_256", "recipe.warmup_epochs", "recipe.schedule",
    "recipe.step_milestones", "recipe.step_gamma", "recipe.momentum", "recipe.nesterov", "recipe.weight_decay",
    "recipe.label_smoothing", "recipe.dropout", "recipe.stochastic_depth", "recipe.stochastic_depth_rule",
    "recipe.randaugment_ops", "recipe.randaugment_magnitude", "recipe.ema_decay", "recipe.ema_horizon",
    "trainer.precision",
})
TUNE_KEYED = frozenset({"tune.trials", "tune.sampler_seed", "tune.pruner", "tune.startup_trials", "tune.space"})

# Settings added after key version 1: name -> neutral value, or a test of the flattened point
# that says whether the setting is neutral there (keyed only where it is not).
ADDED: dict[str, Any] = {
    # EMA decay given per images seen at this batch (study.train.recipe): neutral with the EMA off,
    # at the reference batch itself, or null (per step, the behaviour before it existed).
    "recipe.ema_reference_batch": lambda s: s["recipe.ema_reference_batch"] in (None, s["recipe.batch_size"])
    or s["recipe.ema_decay"] == 0,
    # Only feeds recipe.dropout through the resnet_rs rule; recipe.dropout itself is keyed.
    "recipe.dropout_width_slope": lambda s: True,
    # Crops: pad crops of the whole image were the only kind before these settings.
    "data.crop": "pad",
    "data.eval_crop": 1.0,
    "data.crop_scale": lambda s: s["data.crop"] == "pad",
    "data.crop_ratio": lambda s: s["data.crop"] == "pad",
    "data.crop_padding_mode": lambda s: s["data.crop_padding_mode"] == "zero" or s["data.crop"] != "pad"
    or s["data.crop_padding"] == 0 or s["data.augment"] == "none",
    "recipe.decay_norm_and_bias": lambda s: not s["recipe.decay_norm_and_bias"] or s["recipe.weight_decay"] == 0,
    # Only picks data.crop (made concrete by config.validate), which is keyed itself.
    "recipe.random_resized_from": lambda s: True,
    # Several processes with batch norm over the global batch train what one process trains;
    # batch norm over each process's share is another recipe, so both settings are keyed then.
    "trainer.processes": lambda s: s["trainer.processes"] == 1 or str(s["trainer.sync_batchnorm"]).lower() == "true",
    "trainer.sync_batchnorm": lambda s: s["trainer.processes"] == 1 or str(s["trainer.sync_batchnorm"]).lower() == "true",
    # What an image folder holds (rule 6); the named sets have none.
    "data.fingerprint": None,
    # The study's K-th rerun with independent training randomness (config.training_seed).
    "replicate": 0,
}

# Values whose meaning a later version changed: setting -> (changed values, derived key, its value).
REDEFINED = {"model.depth": ({300, 400}, "model.blocks_per_stage", lambda s: list(BLOCKS_PER_STAGE[s["model.depth"]]))}

# Key version 0 (stores written before the contract): these settings, tune.* included, always.
_V0 = KEYED | TUNE_KEYED | {"tune.storage"}


def semantic_settings(study: StudyConfig) -> dict[str, Any]:
    """Every setting that defines the grid point, flattened ('model.width': 0.5, ...): what a
    point run logs as its params."""
    return {k: v for k, v in flatten(study).items() if k not in NON_SEMANTIC}


def _neutral(name: str, flat: dict[str, Any]) -> bool:
    neutral = ADDED[name]
    return neutral(flat) if callable(neutral) else flat[name] == neutral


def _redefined(flat: dict[str, Any]) -> dict[str, Any]:
    return {key: derive(flat) for name, (values, key, derive) in REDEFINED.items() if flat[name] in values}


def keyed_settings(study: StudyConfig) -> dict[str, Any]:
    """The settings the point key hashes (rules 2-5 of the contract); no seed."""
    flat = flatten(study)
    tuned = study.tune.trials > 0
    return {k: v for k, v in flat.items()
            if k in KEYED or (tuned and k in TUNE_KEYED) or (k in ADDED and not _neutral(k, flat))} | _redefined(flat)


def _digest(settings: dict[str, Any]) -> str:
    canonical = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def point_key(study: StudyConfig) -> str:
    """Stable hash of the keyed settings: equal settings give equal keys across runs, machines,
    the order in which overrides were written, and upgrades of this tool."""
    return _digest(keyed_settings(study))


def run_key(study: StudyConfig) -> str:
    """One training of a grid point: its key and seed ('3f2a...-s1'); what skip, resume and
    checkpoints go by."""
    return f"{point_key(study)}-s{study.seed}"


def legacy_run_key(study: StudyConfig) -> str | None:
    """The run key this point had under key version 0, or None when it could not have existed
    then (a setting added since is not at its neutral value)."""
    flat = flatten(study)
    if any(not _neutral(k, flat) for k in ADDED if k in flat) or _redefined(flat):
        return None
    return f"{_digest({k: v for k, v in flat.items() if k in _V0})}-s{study.seed}"


def before_fingerprints(study: StudyConfig) -> list[str]:
    """The run keys this image-folder point had before data fingerprints (key version 1 and,
    where it could exist, version 0): the same settings with no fingerprint. Empty for a point
    without one."""
    if study.data.fingerprint is None:
        return []
    bare = replace(study, data=replace(study.data, fingerprint=None))
    return [k for k in (run_key(bare), legacy_run_key(bare)) if k]


def display_name(study: StudyConfig, choices: list[str] = ()) -> str:
    """Short human name of a point: 'w=0.5 d=26 r=20 e=8' (+ replicate and seed when not 0), then the
    config-group choices a sweep varies ('ladder=03_ema'), which the numbers do not show."""
    name = (f"w={study.model.width:g} d={study.model.depth} "
            f"r={study.data.resolution} e={study.recipe.epochs}")
    name += (f" rep={study.replicate}" if study.replicate else "") + (f" s={study.seed}" if study.seed else "")
    return " ".join([name, *choices])


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
