"""A sweep's points composed and checked before any trains: the sweep file composed with its
Hydra node (`compose_sweep`, for make decide and make prepare-data), each grid point's
config (`point_config`, composed once per set of group choices) and every point validated
at once (`validate_grid`, exit 2 naming each bad setting).
"""
from __future__ import annotations

import copy
import sys

from hydra import compose
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from study.settings import config, grid, identity
from study.settings.config import CODE_ROOT, ConfigError


def compose_sweep(sweep_file: str, overrides: list[str], within=None):
    """The sweep's composed config (with its hydra node); `within(cfg)`'s value instead when
    given, called while Hydra is initialised (to compose its points)."""
    from hydra import initialize_config_dir

    config.register()
    with initialize_config_dir(config_dir=str(CODE_ROOT / "sweeps"), version_base="1.3"):
        cfg = compose(config_name=sweep_file, overrides=[f"hydra.searchpath=[file://{CODE_ROOT}/conf]", *overrides],
                      return_hydra_config=True)
        return within(cfg) if within else cfg


def validate_grid(sweep_cfg: DictConfig, jobs: list[list[str]]) -> list[config.StudyConfig]:
    """Validate every point before any trains; exits 2 naming the bad settings."""
    base = copy.deepcopy(sweep_cfg)
    with open_dict(base):
        del base["hydra"]
    name = sweep_cfg.hydra.job.config_name
    # Config groups found through an added search path (make decide's points) compose with it.
    searchpath = [f"hydra.searchpath=[{','.join(sweep_cfg.hydra.searchpath)}]"] if sweep_cfg.hydra.searchpath else []
    studies, problems, composed = [], [], {}
    with identity.once():  # a data folder is listed once for the whole grid
        for overrides in jobs:
            try:
                studies.append(config.validate(point_config(base, name, overrides, composed, searchpath)))
            except ConfigError as e:
                problems.append(f"point {' '.join(overrides)}: {e}")
    if problems:
        print("error: the sweep has invalid points, nothing was run:\n" + "\n".join(problems), file=sys.stderr)
        sys.exit(2)
    keys = [grid.run_key(s) for s in studies]
    if len(set(keys)) < len(keys):
        print(f"warning: {len(keys) - len(set(keys))} grid points repeat another point's settings",
              file=sys.stderr)
    return studies


def point_config(base: DictConfig, config_name: str, overrides: list[str],
                 composed: dict | None = None, hydra_overrides: list[str] = ()) -> DictConfig:
    """The composed config of one point. Group choices (`data=cifar10`, `+regime=x`) and added
    or deleted keys need Hydra's full composition (a tenth of a second or more, with
    `hydra_overrides` such as the search path); it runs once per distinct set of them when
    `composed` (a cache) is given. Overrides of plain settings are then applied to a copy
    (milliseconds), as Hydra applies them after composition."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    plain = [o for o in parsed if o.package is None and _is_leaf(base, o.key_or_group) and not o.is_delete()
             and not o.is_add() and not o.is_force_add()]
    structural = tuple(o.input_line for o in parsed if o not in plain)
    cfg = base
    if structural:
        cache = composed if composed is not None else {}
        if structural not in cache:
            cache[structural] = compose(config_name, overrides=[*structural, *hydra_overrides])
        cfg = cache[structural]
    cfg = copy.deepcopy(cfg)
    for o in plain:
        OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
    return cfg


def _is_leaf(cfg: DictConfig, key: str) -> bool:
    node = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    return not isinstance(node, DictConfig) and key.split(".")[0] in cfg
