"""Hydra callback around a sweep: validates every grid point, weighs its compute, opens the
store and records the grid it declares (the study's manifest) before the first job; when the last one ends, prints a summary table of every
point, makes the sweep's report (analysis.auto) and the link that opens its runs."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from study.data import sets
from study.point import device as devices
from study.record import view
from study.settings import config, grid, hardware
from study.settings.config import ConfigError, stored_size
from study.sweep import handoff, manifest, progress
from study.sweep.cluster import check_store_for_launcher, measure_elsewhere, waiting_line
from study.sweep.compose import validate_grid


class SweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        params = dict(config.hydra.sweeper.params or {})
        jobs = grid.expand(params, list(config.hydra.overrides.task))
        studies = validate_grid(config, jobs)
        first = studies[0]
        precision = precision_line(studies)
        largest = max(stored_size(s.data) for s in studies)
        handoff.write_grid(Path(config.hydra.sweep.dir), len(jobs), [progress.weight(s) for s in studies],
                           largest_stored=largest)
        from study.record.redaction import redact, redact_logs
        from study.record.access import check_store
        from study.record.tracking import mlflow_tracker

        redact_logs()  # Hydra echoes each job's overrides

        try:
            check_store_for_launcher(first.tracking.uri, config.hydra.launcher)
            check_store(first.tracking.uri, first.sweep)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        # Open (and if new, create) the store, experiment and parent run once, before any job.
        t = first.tracking
        self.tracker = mlflow_tracker(t.uri, first.sweep, t.artifact_root, t.retry_s)
        if params:  # a declared grid (make decide's rounds declare none: it records its own)
            self.tracker.describe(description(first, config.hydra.job.config_name, axes(jobs), len(jobs)))
            manifest.record(self.tracker.client, self.tracker.parent_id,
                            manifest.declared(studies, "sweep", config.hydra.job.config_name))
        self.study = first
        view.install(self.tracker.client, self.tracker.experiment_id)
        print(f"sweep '{first.sweep}': {len(jobs)} points, recorded in {redact(first.tracking.uri)}", flush=True)
        print(f"data: {data_path(first, config, largest)}", flush=True)
        print(precision, flush=True)
        if waiting := waiting_line(config.hydra.launcher):
            print(waiting, flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from study.record.redaction import redact_hydra_output

        sweep_dir = Path(config.hydra.sweep.dir)
        redact_hydra_output(sweep_dir)  # multirun.yaml
        results = handoff.read_outcomes(sweep_dir)
        progress.Console().end()
        print(summary_table(results), flush=True)
        if failures := failed_groups(results, config.hydra.job.config_name, list(config.hydra.overrides.task),
                                     list(config.hydra.overrides.hydra)):
            print(failures, flush=True)
        failed = any(r["status"] in ("FAILED", "UNRECORDED") for r in results)
        self.tracker.close_sweep(failed)
        view.install(self.tracker.client, self.tracker.experiment_id)  # the new runs' log10 FLOPs and colours
        if self.study.trainer.measure_alone:  # the jobs have ended: the machine is the phase's alone
            from study.measure import alone

            elsewhere = measure_elsewhere(config.hydra.launcher, self.study.sweep, self.study.tracking.uri)
            print(elsewhere or alone.after_sweep(self.tracker, self.study.trainer.device), flush=True)
        if self.study.analysis.auto:
            print("\n".join(_report(self.study)), flush=True)
        print(f"browse: {browse_hint(self.study.tracking.uri, self.tracker.experiment_id)}", flush=True)
        if failed:
            sys.exit(1)


def data_path(study: config.StudyConfig, sweep_cfg: DictConfig, largest_stored: int) -> str:
    """How the sweep's points read their data (each job decides again on the machine it runs on)."""
    try:
        device = hardware.resolve_device(study.trainer.device)
        return sets.resolve(study, device, devices.parallel_jobs(sweep_cfg.hydra.launcher), largest_stored)[1]
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def precision_line(studies: list[config.StudyConfig]) -> str:
    """The precision line of the sweep's first point, once every point's precision is known to
    run on this machine; exits 2 naming the setting otherwise (bf16 on a CPU), before anything
    is recorded."""
    try:
        lines = [hardware.precision_line(s.trainer.precision, hardware.resolve_device(s.trainer.device))
                 for s in studies]
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return lines[0]


def _report(study: config.StudyConfig) -> list[str]:
    """Analyse the sweep (as make analyze); a failure of the analysis never fails the sweep."""
    from analysis import report

    out = Path(config.project_root(), "reports", study.sweep)
    try:
        return report.after_sweep(study.sweep, study.tracking.uri, out, study.analysis.replicates)
    except Exception as e:  # the points are recorded whatever happens here
        return [f"report: not made: the analysis failed ({type(e).__name__}: {e}); "
                f"make analyze SWEEP={study.sweep} shows the whole error"]


def browse_hint(uri: str, experiment_id: str) -> str:
    """The link to the sweep's runs, and what serves it."""
    from study.record.contract import runs_link, ui_base

    link = runs_link(ui_base(uri), experiment_id)
    return link if uri.startswith("http") else f"make ui, then open {link}"


def axes(jobs: list[list[str]]) -> dict[str, str]:
    """Each setting the jobs set, with its values in launch order: the grid as launched."""
    values: dict[str, list[str]] = {}
    for job in jobs:
        for override in job:
            key, _, value = override.partition("=")
            if value not in values.setdefault(key, []):
                values[key].append(value)
    return {k: ",".join(v) for k, v in values.items()}


def description(study: config.StudyConfig, sweep_file: str, grid_axes: dict, points: int) -> str:
    """The experiment's description (Markdown, shown above its runs in MLflow's UI)."""
    lines = "\n".join(f"- `{k}`: {v}" for k, v in grid_axes.items()) or "- (no axes)"
    return (f"**Scaling sweep `{study.sweep}`**: {points} grid points on `{study.data.name}`, one child run per "
            f"point and seed under the parent run `{study.sweep}`.\n\nGrid (`sweeps/{sweep_file}.yaml`):\n{lines}\n\n"
            f"Rerun (finished points are skipped): `make sweep SWEEP={sweep_file}`. One point: "
            f"`make point SWEEP={sweep_file} POINT=\"model.width=... model.depth=... data.resolution=... "
            f"recipe.epochs=...\"`. The report: `reports/{study.sweep}/report.html`, and `report/` on the parent run.")


STATUSES = ("FINISHED", "SKIPPED", "FAILED", "BUSY", "UNRECORDED")


def summary_table(results: list[dict]) -> str:
    """The table printed when a sweep ends: a line per point, then the counts by status."""
    header = f"{'#':>4}  {'point':<24} {'status':<9} {'top1':>6} {'MFLOPs':>9} {'lat ms':>7} {'time s':>7}"
    lines = [header, "-" * len(header)]
    for i, r in enumerate(results, 1):
        top1 = f"{r['top1']:.3f}" if "top1" in r else "-"
        flops = f"{r['flops'] / 1e6:.1f}" if "flops" in r else "-"
        lat = f"{r['latency_ms']:.2f}" if "latency_ms" in r else "-"
        lines.append(f"{i:>4}  {r['name']:<24} {r['status']:<9} {top1:>6} {flops:>9} {lat:>7} {r['seconds']:>7.1f}")
    counts = {s: sum(r["status"] == s for r in results) for s in STATUSES}
    total = sum(r["seconds"] for r in results)
    lines.append(f"{len(results)} points: " + ", ".join(f"{n} {s.lower()}" for s, n in counts.items()
                                                         if n or s in ("FINISHED", "SKIPPED", "FAILED"))
                 + f"; {total:.0f}s in points")
    if counts["BUSY"]:
        lines.append(f"{counts['BUSY']} point(s) were being trained by another process and were left to it")
    if counts["UNRECORDED"]:
        lines.append(f"{counts['UNRECORDED']} point(s) trained but could not be recorded (the store failed): "
                     "their results are kept on disk; run the sweep again to record them")
    return "\n".join(lines)


def failed_groups(results: list[dict], config_name: str, task_overrides: list[str],
                  hydra_overrides: list[str] = ()) -> str:
    """The failed points grouped by what failed them, with the command that reruns only them
    (the sweep again, on the same launcher and its settings: finished points are skipped) and,
    for each, the one that reruns it another way. Empty when none failed."""
    from study.record.contract import failure_kind

    failed = [r for r in results if r["status"] == "FAILED"]
    if not failed:
        return ""
    groups: dict[str, list[dict]] = {}
    for r in failed:
        groups.setdefault(failure_kind(r.get("reason", "unknown")), []).append(r)
    lines = [f"{len(failed)} point(s) failed:"]
    for kind, points in sorted(groups.items(), key=lambda g: -len(g[1])):
        lines.append(f"  {len(points)} {kind} (e.g. {points[0].get('reason', 'unknown')[len(kind) + 2:]}): "
                     + ", ".join(p["name"] for p in points))
        lines += [f"      {p['name']}: rerun it {p['rerun']}" for p in points if p.get("rerun")]
    launch = [o for o in hydra_overrides if o.lstrip("+~").startswith(("hydra/launcher", "hydra.launcher."))]
    args = " ".join([*launch, *(o for o in task_overrides if not o.startswith("hydra"))])
    lines.append(f"rerun only the failed points (finished ones are skipped): make sweep SWEEP={config_name}"
                 + (f' ARGS="{args}"' if args else ""))
    return "\n".join(lines)
