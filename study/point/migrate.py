"""A point's runs recorded under its earlier keys, found again before the point decides to skip,
resume or train (study.settings.grid, rules 6 and 7):

- key version 0: runs recorded before the point-key contract are re-tagged with the point's
  current keys, so an upgrade finds every finished run again;
- before data fingerprints: an image-folder point takes over a run recorded under its key
  without a fingerprint only when the folder that run trained on is at hand and holds the
  point's data; the others are reported and never reused.
"""
from __future__ import annotations

from typing import Callable

from study.record.tracking import Tracker
from study.settings import config, grid
from study.settings.config import StudyConfig


def earlier_keys(study: StudyConfig, tracker: Tracker, run_key: str, key: str, say: Callable[[str], None]) -> None:
    """Re-tag (or report) this point's runs recorded under its earlier keys."""
    if (legacy := grid.legacy_run_key(study)) and legacy != run_key and (n := tracker.migrate(legacy, run_key, key)):
        say(f"{n} run(s) recorded before point-key version {grid.KEY_VERSION} re-tagged with this point's key")
    for old in grid.before_fingerprints(study):
        roots = tracker.recorded_roots(old)
        same = [run for run, root in roots.items() if root and config.folder_fingerprint(root) == study.data.fingerprint]
        if same:
            n = tracker.migrate(old, run_key, key, only=same, params={"data.fingerprint": study.data.fingerprint})
            say(f"{n} run(s) recorded before data fingerprints trained on this folder's data: taken over")
        if others := sorted({root or "a folder it does not name" for run, root in roots.items() if run not in same}):
            say(f"{len(roots) - len(same)} run(s) recorded with this point's settings before data fingerprints "
                f"trained on {', '.join(others)}: not at hand or not this data ({study.data.fingerprint}), "
                "so not reused for this point")
