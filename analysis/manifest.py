"""A study's manifest: the grid its sweep declared, so the analysis rests only on the study's own
points. Part of the run-record contract (docs/run-record.md).

Each `make sweep` records the grid it declared, and each `make decide` its candidate set, as a
JSON artifact of the sweep's parent run, `manifest/<source>-<digest>.json` (the same grid is
recorded once, however often it is run):

    {"version": 1, "source": "sweep" | "decide", "sweep": NAME, "sweep_file": FILE,
     "points": [[point keys of a point], ...], "axes": {setting: [values]}, "fixed": {setting: value}}

`points` lists each declared point as its point keys (any seed of a point shares its key; a
point has one key per way its `auto` settings can resolve where it trains: the precision is
keyed as resolved, fp32 on CPUs, bf16 on most GPUs); `axes`
the settings that vary among them and their values, `fixed` the settings they share (values as
the run record's params write them). The study is every point of every grid recorded under the
sweep; a run of the experiment outside them (a `make point` at other epochs, a tuned point,
another data folder or recipe) is listed as outside the study, with why, and left out of every
fit unless asked for (`--include-outside`). A store written before manifests has none: every
run is analysed, with a warning that says so.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

FOLDER = "manifest"
VERSION = 1
BEFORE_MANIFESTS = ("sweep {sweep!r} was recorded before study manifests: every run in its experiment is analysed, "
                    "runs of other grids, data or recipes included; run its sweep again (make sweep SWEEP=..., finished "
                    "points are skipped) to record its declared grid")
# What a differing setting says about a run outside the study, by the setting's section.
KINDS = (("recipe.epochs", "other epochs"), ("data.", "other data"), ("recipe.", "other recipe"),
         ("model.", "another model"), ("", "other settings"))


@dataclass(frozen=True)
class Manifest:
    points: frozenset[str]                                     # point keys of every declared grid
    allowed: dict[str, frozenset[str]] = field(default_factory=dict)  # setting -> every value declared
    grids: int = 0                                             # declared grids recorded
    count: int = 0                                             # declared points, over every grid
    sweep_file: str = ""                                       # the sweep file that declared them (make sweep's SWEEP=)

    def holds(self, point_key: str | None) -> bool:
        return point_key in self.points


def artifact_path(record: dict) -> str:
    """Where one declared grid is kept on the parent run: named by its content."""
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    return f"{FOLDER}/{record['source']}-{digest}.json"


def read(client, parent_run_id: str) -> Manifest | None:
    """The union of the grids recorded on the sweep's parent run; None when none was."""
    try:
        files = [f.path for f in client.list_artifacts(parent_run_id, FOLDER) if f.path.endswith(".json")]
    except Exception:  # a store that cannot list the run's artifacts has no manifest to read
        return None
    if not files:
        return None
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bar per small file
    groups, allowed, sweep_files = set(), {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for path in files:
            grid = json.loads(Path(client.download_artifacts(parent_run_id, path, tmp)).read_text())
            sweep_files.append(grid.get("sweep_file") or "")
            groups |= {frozenset(p) if isinstance(p, list) else frozenset([p]) for p in grid["points"]}
            for setting, values in grid.get("axes", {}).items():
                allowed.setdefault(setting, set()).update(values)
            for setting, value in grid.get("fixed", {}).items():
                allowed.setdefault(setting, set()).add(value)
    points = frozenset().union(*groups)
    named = sorted({f for f in sweep_files if f})
    return Manifest(points, {k: frozenset(v) for k, v in allowed.items()}, len(files), len(groups),
                    named[0] if len(named) == 1 else "")


def why_outside(params: dict[str, str], tags: dict[str, str], manifest: Manifest) -> str:
    """Why a run is not one of the study's points, in words: 'tuned', 'other epochs:
    recipe.epochs=8 (the study's: 1, 4)', 'other data: data.fingerprint=...'."""
    reasons = ["tuned (make tune): its regularization was chosen for it"] if tags.get("tuned") == "true" else []
    grouped: dict[str, list[str]] = {}
    for setting, values in sorted(manifest.allowed.items()):
        value = params.get(setting, "null")
        if value not in values:
            kind = next(k for prefix, k in KINDS if setting.startswith(prefix))
            grouped.setdefault(kind, []).append(f"{setting}={value} (the study's: {', '.join(sorted(values))})")
    reasons += [f"{kind}: {'; '.join(found)}" for kind, found in grouped.items()]
    return "; ".join(reasons) or "another combination of the grid's values than it declared"


def kind(why: str) -> str:
    """The first kind of a reason (`other epochs`, `tuned (make tune)`, ...), for counting."""
    return why.split(":")[0]
