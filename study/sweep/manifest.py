"""The study's manifest, written: the grid a sweep declared (make sweep) or the candidate set of
an adaptive study (make decide), as a JSON artifact of the sweep's parent run. Its format, and
how the analysis reads it, are in analysis/manifest.py (the run-record contract)."""
from __future__ import annotations

import itertools
from dataclasses import replace

from analysis import manifest as contract
from study.record.tracking import param_str
from study.settings import grid
from study.settings.config import StudyConfig


def as_trained(study: StudyConfig) -> list[StudyConfig]:
    """The point as each job may resolve its `auto` settings where it runs (study.point.device:
    the precision, keyed as resolved, is fp32 on CPUs and bf16 on most GPUs; batch norm over
    several processes synchronised on GPUs): every way it can be recorded."""
    t = study.trainer
    precisions = ("fp32", "bf16") if t.precision == "auto" else (t.precision,)
    syncs = ("true", "false") if str(t.sync_batchnorm).lower() == "auto" else (str(t.sync_batchnorm).lower(),)
    return [replace(study, trainer=replace(t, precision=p, sync_batchnorm=b)) for p, b in itertools.product(precisions, syncs)]


def declared(studies: list[StudyConfig], source: str, sweep_file: str) -> dict:
    """The manifest of these validated points: their point keys (as_trained), the settings that
    vary among them (axes) with their values and those they share (fixed), as the run record
    writes them."""
    points = sorted({tuple(sorted({grid.point_key(v) for v in as_trained(s)})) for s in studies})
    studies = [v for s in studies for v in as_trained(s)]
    settings = [{k: param_str(v) for k, v in grid.semantic_settings(s).items() if not k.startswith("tune.")}
                for s in studies]
    names = sorted(set().union(*settings))
    values = {n: sorted({s.get(n, "null") for s in settings}) for n in names}
    return {"version": contract.VERSION, "source": source, "sweep": studies[0].sweep, "sweep_file": sweep_file,
            "points": [list(keys) for keys in points],
            "axes": {n: v for n, v in values.items() if len(v) > 1},
            "fixed": {n: v[0] for n, v in values.items() if len(v) == 1}}


def record(client, parent_run_id: str, manifest: dict) -> str:
    """Write the manifest on the parent run, once per distinct grid; returns its path there."""
    path = contract.artifact_path(manifest)
    if not any(f.path == path for f in client.list_artifacts(parent_run_id, contract.FOLDER)):
        client.log_dict(parent_run_id, manifest, path)
    return path
