"""The schema of every setting, its units and allowed values, and every range check.

The dataclasses are registered in Hydra's ConfigStore as `schema`, under the YAML values of
`conf/`. `validate()` runs once at the entry point, before anything is built, and returns
frozen dataclasses that are then passed explicitly; there is no global config object.
"""
from __future__ import annotations

import hashlib
import json
import os
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from study.settings import identity
from study.settings.identity import PREPARED_FILE, prepared  # noqa: F401 (a prepared copy's manifest)
from study.settings.family import BLOCKS_PER_STAGE, DROP_PATH_RULES
from study.settings.regularization import register_resolvers
from study.settings.rules import Rule, above, at_least, interval, one_of, or_null, ordered_pair, setting

DATASETS = ("mnist", "synthetic", "image_folder", "cifar10", "cifar100")
AUGMENTS = ("flip_crop", "crop", "none")
CROPS = ("pad", "random_resized")
PADDING_MODES = ("zero", "reflect")
LOADERS = ("auto", "memory", "stream")
EVAL_CROP_RANDOM_RESIZED = 0.875  # the ImageNet convention: 224 px centre crop of a 256 px image
PRECISIONS = ("auto", "fp32", "bf16")
SCHEDULES = ("cosine", "step")
DEVICES = ("auto", "cpu", "cuda")
MODES = ("auto", "true", "false")  # trainer.compile and trainer.sync_batchnorm
CODE_ROOT = Path(__file__).resolve().parents[2]  # the checkout (or site-packages) holding study/


class ConfigError(ValueError):
    """One or more settings are invalid; the message names each setting and what is allowed."""


MILESTONES = Rule(lambda v: all(0 < a < 1 for a in v) and list(v) == sorted(set(v)),
                  "must be increasing fractions of the run in (0, 1)")
A_MODE = Rule(lambda v: mode(v) in MODES, f"must be one of {', '.join(MODES)}")  # a YAML true arrives as True


@dataclass(frozen=True)
class ModelConfig:
    depth: int = setting(26, one_of(sorted(BLOCKS_PER_STAGE)))
                                    # network depth, a key of study.settings.family.BLOCKS_PER_STAGE
    width: float = setting(1.0, above(0))  # multiplier on every stage's channels and the stem
    se: bool = True                 # squeeze-and-excitation in every block (paper: on)
    se_ratio: float = setting(0.25, interval("(0, 1]"))  # SE bottleneck ratio (paper: 0.25)
    resnet_d: bool = True           # ResNet-D stem + avg-pool shortcut, stem pool -> stride-2 conv


@dataclass(frozen=True)
class DataConfig:
    name: str = setting("mnist", one_of(DATASETS))
    root: Optional[str] = None      # image_folder: the folder; cifar10/100: download folder. Where
                                    # the data lies is not part of a point: what it holds is (fingerprint)
    fingerprint: Optional[str] = None  # derived, never set: image_folder: the fingerprint of the folder's
                                    # images (study.settings.identity), part of the point key; null for
                                    # the named sets (mnist, cifar10, ...), whose name says what they hold
    download: bool = False          # cifar10/100: fetch through torchvision if absent
    resolution: int = setting(28, at_least(8, "pixels"))  # px, square, train and evaluation
    minival_fraction: float = setting(0.02, interval("(0, 0.5]"))
                                    # share of the training pool held out for every selection (paper:
                                    # 2%); the test split is only reported, never used to choose
    test_fraction: float = setting(0.2, interval("(0, 0.5]"))
                                    # share held out as test, only for sets without a test split
    split_seed: int = 0             # seed of the train/minival/test split (fixed per study)
    max_train_images: Optional[int] = setting(None, or_null(at_least(1)))  # use a subset of the training split
    augment: str = setting("crop", one_of(AUGMENTS))  # one of AUGMENTS: random crop (+ horizontal flip), or none
    crop_padding: float = setting(0.125, interval("[0, 0.5]"))
                                    # random-crop padding, fraction of the resolution
    crop_padding_mode: str = setting("zero", one_of(PADDING_MODES))
                                    # one of PADDING_MODES: what the pad crop fills the border with:
                                    # black (zero) or the image mirrored at its edge (reflect; natural
                                    # images: CIFAR-10 and image folders)
    crop: Optional[str] = setting(None, one_of(CROPS, " (or null: by the recipe)"))
                                    # one of CROPS: `pad`, a random crop of the zero-padded image
                                    # (crop_padding); `random_resized`, Inception-style scale augmentation
                                    # (a random area and aspect ratio, resized to the resolution)
                                    # null = random_resized from recipe.random_resized_from px, else pad
    crop_scale: list[float] = setting(factory=lambda: [0.08, 1.0], rule=ordered_pair(high=1))
                                    # random_resized: range of the crop's area over the image's
    crop_ratio: list[float] = setting(factory=lambda: [3 / 4, 4 / 3], rule=ordered_pair())
                                    # random_resized: range of the crop's aspect ratio (sampled
                                    # log-uniformly)
    eval_crop: Optional[float] = setting(None, interval("(0, 1]"))
                                    # evaluation: the centre crop's side over the stored image's, (0, 1]
                                    # images are stored at resolution / eval_crop; null = 0.875 with
                                    # random_resized, 1 (the whole image) with pad
    synthetic_images: int = setting(2000, at_least(50))  # synthetic: number of images (all splits)
    synthetic_classes: int = setting(10, at_least(2))  # synthetic: number of classes
    synthetic_size: int = setting(16, at_least(8, "pixels"))  # synthetic: native image side in px
    loader: str = setting("auto", one_of(LOADERS))  # one of LOADERS: `memory` decodes every image once into memory
                                    # `stream` (image_folder only) decodes batches from the files in
                                    # loader workers (study.data.stream); `auto` streams when the decoded
                                    # splits at the sweep's largest resolution exceed memory_budget_gb.
                                    # Both train the same point: not part of the point key
    memory_budget_gb: Optional[float] = setting(None, or_null(above(0, "GB")))
                                    # auto: memory the decoded splits may take, > 0; null =
                                    # half the machine's RAM over the parallel jobs (on a GPU, also at
                                    # most half its memory)
    workers: Optional[int] = setting(None, or_null(at_least(0)))
                                    # stream: loader worker processes, >= 0 (0 = in the training
                                    # process); null = from the job's cores (study.data.sets.workers_for)


@dataclass(frozen=True)
class RecipeConfig:
    epochs: int = setting(8, at_least(1))  # passes over the training split
    batch_size: int = setting(128, at_least(1))  # images per step
    lr_per_256: float = setting(0.1, above(0))  # lr = lr_per_256 * batch_size / 256 (linear scaling rule)
    warmup_epochs: float = setting(1.0, at_least(0))  # linear warm-up from 0, then the schedule; >= 0, capped
                                    # at WARMUP_CAP x epochs (study.train.recipe.warmup_steps)
    schedule: str = setting("cosine", one_of(SCHEDULES))  # one of SCHEDULES: cosine decay to 0, or step decay
    step_milestones: list[float] = setting(factory=lambda: [1 / 3, 2 / 3, 8 / 9], rule=MILESTONES)
                                    # step: fractions of the run where lr x= step_gamma (90-epoch
                                    # baseline: epochs 30, 60, 80)
    step_gamma: float = setting(0.1, interval("(0, 1]"))  # step: lr multiplier at each milestone
    momentum: float = setting(0.9, interval("[0, 1)"))  # Nesterov momentum
    nesterov: bool = True
    weight_decay: float = setting(4e-5, at_least(0))  # L2 on conv/linear weights, not on BN or biases (paper)
    decay_norm_and_bias: bool = False  # also decay batch-norm parameters and biases (what a plain
                                    # torch.optim.SGD(model.parameters(), weight_decay=...) loop does)
    label_smoothing: float = setting(0.1, interval("[0, 1)"))
    dropout: float = setting(0.0, interval("[0, 1)"))  # dropout before the classifier
    random_resized_from: Optional[int] = setting(None, or_null(at_least(8, "pixels")))
                                    # with data.crop null: random-resized crops from this
                                    # resolution on (recipe=resnet_rs: 128 px, the paper's ImageNet
                                    # recipe); null = never
    dropout_width_slope: float = setting(0.1, interval("[0, 0.5]"))
                                    # recipe=resnet_rs: dropout added per doubling of the width
                                    # multiplier above 1 (study.settings.regularization.dropout)
    stochastic_depth: float = setting(0.0, interval("[0, 1)"))  # drop-path rate of the last stage (or block)
    stochastic_depth_rule: str = setting("stage", one_of(DROP_PATH_RULES))
                                    # one of study.settings.family.DROP_PATH_RULES: the paper's
                                    # 0.4/0.6/0.8/1.0 x rate per stage, or timm's linear per block
    randaugment_ops: int = setting(0, Rule(lambda v: 0 <= v <= 5, "must be in 0..5 (0 = off)"))
                                    # RandAugment ops per image after crop/flip, 0 = off, 0..5
    randaugment_magnitude: float = setting(10.0,
                                           interval("[0, 30]", "TF's scale: 10 = the strongest of the original range"))
                                    # TF's 0-10 scale (values above 10 extrapolate)
    ema_decay: float = setting(0.0, interval("[0, 1)", "0 = no EMA"))
                                    # weight EMA decay (paper 0.9999), 0 = off, [0, 1); evaluation
                                    # then uses the EMA weights and batch-norm statistics
    ema_reference_batch: Optional[int] = setting(4096, or_null(at_least(1)))
                                    # the batch ema_decay is given for: per step the decay
                                    # is ema_decay^(batch_size / ema_reference_batch), so the EMA spans
                                    # the same number of images at any batch (paper: 0.9999 at 4096)
                                    # null = ema_decay per step whatever the batch
    ema_horizon: float = setting(0.1, interval("(0, 1]"))  # the EMA averages over at most this share of the run's steps
                                    # (study.train.recipe.ema_decay_at)


@dataclass(frozen=True)
class TrainerConfig:
    device: str = setting("auto", one_of(DEVICES))  # one of DEVICES; auto = cuda when available
    precision: str = setting("auto", one_of(PRECISIONS))
                                    # one of PRECISIONS; bf16 = autocast; auto = bf16 on a CUDA GPU
                                    # with bf16, else fp32; bf16 on a CPU is refused (not sound in
                                    # torch 2.14.1's oneDNN: study.point.device); keyed as resolved
    channels_last: bool = True      # NHWC memory format (1.2x on this 2-core AVX2 CPU, 1.4x on AVX-512)
    compile: str = setting("auto", A_MODE)
                                    # torch.compile the training steps: true, false, or auto = after the
                                    # first epoch, where the expected saving exceeds the compile time
                                    # (study.train.compiling; never on a CPU, where it did not pay)
    threads: int = setting(0, at_least(0, "0 = all cores"))
                                    # intra-op threads; 0 = this process's cores / parallel jobs
    processes: int = setting(1, at_least(1))  # processes that train one point together (DistributedDataParallel
                                    # study.train.distributed: gloo on CPUs, nccl on GPUs); recipe.batch_size
                                    # stays the global batch, split evenly among them
    sync_batchnorm: str = setting("auto", A_MODE)
                                    # batch norm over the global batch when processes > 1: true, false
                                    # or auto = true on GPUs, false on CPUs (SyncBatchNorm needs a GPU)
                                    # false keys trainer.processes (it changes what is trained)
    eval_batch_size: int = setting(512, at_least(1))  # images per evaluation batch
    latency_batch_size: int = setting(32, at_least(1))  # batch of the inference-latency measurement
    latency_repeats: int = setting(10, at_least(1))  # timed repeats (median reported)
    measure_alone: bool = True      # when a sweep's last point has ended, measure each finished point's
                                    # training step alone on all cores (study.measure.alone: step_latency_ms)
    progress: bool = True           # a progress bar within each point (on a terminal)
    deterministic: bool = False     # deterministic kernels: rerunning a point repeats its metrics
    checkpoints: bool = True        # save the training state after every epoch; a rerun resumes
    keep_checkpoints: bool = False  # keep a finished point's checkpoint (<project>/checkpoints/)


@dataclass(frozen=True)
class TrackingConfig:
    uri: str = "sqlite:///mlflow.db"   # MLflow tracking URI (conf/tracking sets an absolute path)
    artifact_root: Optional[str] = None  # folder for artifacts of new experiments
    retry_s: float = setting(300.0, at_least(0, "seconds"))
                                    # how long a store call is retried while the store is busy or
                                    # unreachable (a server restart) before the call gives up, >= 0
                                    # epoch metrics are buffered meanwhile and training goes on


PRUNERS = ("median", "hyperband", "none")


@dataclass  # not frozen: OmegaConf makes the values of a dict of frozen dataclasses read-only mid-merge
class SearchRange:
    low: float                      # inclusive bounds of a setting's search range
    high: float
    log: bool = False               # sample uniformly in log space
    integer: bool = False


@dataclass(frozen=True)
class TuneConfig:
    trials: int = setting(0, at_least(0, "0 = no tuning"))
                                    # 0: no tuning; N: tune with N trials in all (restarts included) on
                                    # the minival split, then train the point with the best settings
    sampler_seed: int = 0           # seed of Optuna's TPE sampler
    pruner: str = setting("median", one_of(PRUNERS))  # one of PRUNERS: stops trials whose val/top1 trails at an epoch
    startup_trials: int = setting(2, at_least(0))  # trials that run to the end before pruning starts
    storage: Optional[str] = None   # Optuna storage URL (postgresql://... on a cluster); null = the
                                    # journal file <project>/optuna/journal.log (safe for parallel workers)
    space: dict[str, SearchRange] = field(default_factory=dict)  # dotted setting -> range (conf/tune/)


@dataclass(frozen=True)
class AnalysisConfig:
    auto: bool = True               # analyse the sweep when it ends: the report (make analyze's) goes to
                                    # reports/<sweep>/ and the sweep's parent run; false = off
    replicates: int = setting(1000, at_least(1000, "bootstrap refits of the report's decisions"))
                                    # bootstrap refits of that report, >= 1000 as make analyze


@dataclass(frozen=True)
class StudyConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    vars: dict[str, Any] = field(default_factory=dict)  # free values for interpolation in sweep
                                    # files (${vars.name}); not recorded, what they set is
    seed: int = 0                   # seed of initialisation, batch order and augmentation
    seeds: int = setting(1, at_least(1))  # train each point with seeds seed .. seed+seeds-1: separate runs
                                    # that share the point key (tag run_key tells them apart)
    replicate: int = setting(0, Rule(lambda v: v >= 0, "must be an integer >= 0 (0: the study itself; K: its K-th "
                                                       "rerun with independent training randomness)"))
                                    # K > 0 reruns the whole study with independent training randomness
                                    # (training_seed) as other points in the same store; 0: the study
    sweep: str = setting("adhoc", Rule(lambda v: bool(v) and "/" not in v, "must be a non-empty name without '/'"))
                                    # sweep name: the MLflow experiment and parent run
    force: bool = False             # run the point even when a FINISHED run has its key


def training_seed(cfg: StudyConfig) -> int:
    """The seed of a run's training randomness (initialisation, data order, augmentation, dropout,
    stochastic depth): `seed` itself in replicate 0, so the study's runs train as before; in
    replicate K a 56-bit seed drawn from (seed, K), independent of every other seed and
    replicate. The split has its own seed (data.split_seed) and stays."""
    if cfg.replicate == 0:
        return cfg.seed
    digest = hashlib.sha256(f"replicate={cfg.replicate} seed={cfg.seed}".encode()).digest()
    return int.from_bytes(digest[:7], "big")


def project_root() -> str:
    """Where the default store and outputs live: $STUDY_HOME, else the checkout's root."""
    return os.environ.get("STUDY_HOME") or str(CODE_ROOT)


def register() -> None:
    """Register the schema (and the `project_root` resolver) with Hydra; idempotent."""
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", project_root)
    register_resolvers()
    ConfigStore.instance().store(name="schema", node=_mutable(OmegaConf.structured(StudyConfig)))


def _mutable(node: DictConfig) -> DictConfig:
    """Frozen dataclasses become read-only nodes; Hydra must merge YAML and overrides into
    them first, so the flag is cleared here and the frozen objects come from validate()."""
    OmegaConf.set_readonly(node, False)
    for key in node.keys():
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            _mutable(child)
    return node


def validate(cfg: DictConfig | StudyConfig) -> StudyConfig:
    """Typed, range-checked settings, with the settings that default to a rule (data.crop,
    data.eval_crop) made concrete; raises ConfigError naming every bad setting."""
    study = _concrete(cfg if isinstance(cfg, StudyConfig) else OmegaConf.to_object(cfg))
    problems = [f"{name}={value!r}: {rule}" for name, value, rule in _checks(study)]
    if problems:
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems))
    return study


def _concrete(study: StudyConfig) -> StudyConfig:
    """data.crop null -> random_resized from recipe.random_resized_from px, else pad;
    data.eval_crop null -> 0.875 with random_resized, else 1; data.fingerprint from the image
    folder's contents. The concrete values are what the point key and the run record hold."""
    d, r = study.data, study.recipe
    crop = d.crop
    if crop is None:
        crop = "random_resized" if r.random_resized_from is not None and d.resolution >= r.random_resized_from \
            else "pad"
    eval_crop = d.eval_crop
    if eval_crop is None:
        eval_crop = EVAL_CROP_RANDOM_RESIZED if crop == "random_resized" else 1.0
    return replace(study, data=replace(d, crop=crop, eval_crop=float(eval_crop), fingerprint=_fingerprint(d)))


def _fingerprint(d: DataConfig) -> str | None:
    """data.fingerprint made concrete: an image folder's, else null (None when it cannot be
    read: _data_folder_checks then says why)."""
    readable = d.name == "image_folder" and d.root and Path(d.root).expanduser().is_dir()
    return folder_fingerprint(d.root) if readable else None


def folder_fingerprint(root: str) -> str | None:
    """An image folder's fingerprint (study.settings.identity), cached under the project where the
    folder cannot be written; None when it cannot be read."""
    try:
        return identity.fingerprint(root, Path(project_root(), ".cache", "fingerprints"))
    except (identity.Unreadable, OSError, ValueError):
        return None


def setting_type(study: StudyConfig, path: str) -> type | None:
    """The declared type of a dotted setting ('recipe.dropout' -> float; Optional[int] -> int),
    or None when there is no such setting."""
    section, _, name = path.partition(".")
    part = getattr(study, section, None)
    if not is_dataclass(part):
        return None
    hint = typing.get_type_hints(type(part)).get(name)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint


def override(study: StudyConfig, values: dict[str, float]) -> StudyConfig:
    """The study with dotted numeric settings replaced ({'recipe.dropout': 0.2}), each value cast
    to its setting's type; raises ConfigError for a value that type cannot hold (3.5 for an
    integer setting, anything for a non-numeric one). Validate the result."""
    for path, value in values.items():
        kind = setting_type(study, path)
        if kind is int and float(value).is_integer() and not isinstance(value, bool):
            value = int(value)
        elif kind is float and not isinstance(value, bool):
            value = float(value)
        else:
            allowed = "an integer" if kind is int else "a number"
            raise ConfigError(f"invalid settings:\n  {path}={value!r}: must be {allowed}" if kind in (int, float)
                              else f"invalid settings:\n  {path}: only numeric settings can be set this way")
        section, name = path.split(".", 1)
        study = replace(study, **{section: replace(getattr(study, section), **{name: value})})
    return study


def _space_checks(s: StudyConfig):
    """Every tuning range names a numeric setting and stays inside its allowed values."""
    for path, r in s.tune.space.items():
        kind = setting_type(s, path)
        where = f"tune.space.{path}"
        if not _is_setting(s, path):
            yield where, path, "must name a setting, e.g. recipe.weight_decay"
        elif kind not in (int, float):
            yield where, path, "must name a numeric setting"
        elif not (0 < r.low < r.high if r.log else r.low < r.high):
            yield where, (r.low, r.high), "needs low < high (and low > 0 when log)"
        elif kind is int and not r.integer:
            yield where, (r.low, r.high), f"{path} is an integer setting: add integer: true"
        else:
            for bound in (r.low, r.high):
                for name, _, rule in _checks(override(s, {path: bound}), space=False):
                    if name == path:
                        yield where, (r.low, r.high), f"the range leaves {path}'s allowed values ({rule})"


def _checks(s: StudyConfig, space: bool = True):
    """Every rule a field declares (in declaration order), then the rules across settings."""
    yield from _field_checks(s)
    d, r, t = s.data, s.recipe, s.trainer
    across = [
        ("data.eval_crop", d.eval_crop, d.eval_crop == 1 or d.crop == "random_resized",
         "a centre crop goes with data.crop=random_resized (pad crops train on the whole image)"),
        ("data.loader", d.loader, d.loader != "stream" or d.name == "image_folder",
         "stream reads image files: only data=image_folder has them (use memory or auto)"),
        ("recipe.batch_size", r.batch_size, t.processes < 1 or r.batch_size % t.processes == 0,
         f"the global batch must split evenly over trainer.processes={t.processes}"),
        ("tune.trials", s.tune.trials, t.processes == 1 or s.tune.trials == 0,
         "tuning trains its trials in one process: tune with trainer.processes=1"),
    ]
    yield from ((name, value, rule) for name, value, ok, rule in across if not ok)
    yield from _data_folder_checks(d)
    if space:
        yield from _space_checks(s)


def _field_checks(obj, prefix: str = ""):
    """(setting, value, rule) of every field whose value its declared rule does not allow."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if (rule := f.metadata.get("rule")) is not None and not rule.ok(value):
            yield prefix + f.name, value, rule.text
        if is_dataclass(value):
            yield from _field_checks(value, f"{prefix}{f.name}.")


def _is_setting(study: StudyConfig, path: str) -> bool:
    return path in flatten(study) and not path.startswith(("tune.", "tracking.", "trainer."))


def stored_size(d: DataConfig) -> int:
    """The side images are stored at: resolution / eval_crop (ImageNet: 224 / 0.875 = 256), so
    evaluation's centre crop is the resolution exactly and random-resized crops draw from the
    larger image."""
    eval_crop = d.eval_crop if d.eval_crop is not None else 1.0
    return round(d.resolution / eval_crop)


def _data_folder_checks(d: DataConfig):
    if d.name == "image_folder":
        if not d.root:
            yield "data.root", d.root, "image_folder needs the folder of class sub-folders"
        elif not Path(d.root).expanduser().is_dir():
            yield "data.root", d.root, "folder does not exist"
        elif d.fingerprint is None:  # cannot be read: say why
            try:
                identity.fingerprint(d.root, Path(project_root(), ".cache", "fingerprints"))
            except identity.Unreadable as e:
                yield "data.root", d.root, f"the folder {e}"
        elif (copy := prepared(d.root)) and (side := copy["side"]) < stored_size(d):
            yield "data.root", d.root, (f"a copy prepared at shorter side {side} px (make prepare-data); this point "
                                        f"stores images at {stored_size(d)} px (data.resolution / data.eval_crop): "
                                        "prepare a copy at that side or more, or train on the original")
    if d.name in ("cifar10", "cifar100") and not d.download:
        if not d.root or not Path(d.root).expanduser().is_dir():
            yield "data.root", d.root, f"{d.name} needs an existing folder, or data.download=true"


def mode(setting) -> str:
    """trainer.compile (or sync_batchnorm) as one of MODES (a YAML or CLI true/false arrives as
    True/False)."""
    return str(setting).lower()


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dataclasses -> {'model.width': 0.5, ...}."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if isinstance(value, dict):
            value = {k: vars(v) if is_dataclass(v) else v for k, v in sorted(value.items())}
        if is_dataclass(value):
            out |= flatten(value, key + ".")
        else:
            out[key] = value
    return out
