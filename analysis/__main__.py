"""Analyse a sweep's runs.

    python -m analysis --sweep default                      # report into reports/<sweep>/
    python -m analysis --sweep default --include-outside    # also fit runs outside the declared grid
    python -m analysis recommend --sweep default --epochs 4 --latency-ms 10
    python -m analysis recommend --sweep default --epochs 4 --flops 5e6
    python -m analysis --sweep default --measured-on cuda-NVIDIA-H100-80GB-HBM3   # latency of that machine
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def default_uri() -> str:
    """The study's default store: $STUDY_HOME/mlflow.db, else the checkout's mlflow.db."""
    return f"sqlite:///{Path(os.environ.get('STUDY_HOME') or ROOT) / 'mlflow.db'}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["recommend"]:
        return _recommend(argv[1:])
    p = argparse.ArgumentParser(prog="python -m analysis", description="Fit and compare scaling rules of a sweep.")
    p.add_argument("--sweep", required=True)
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: the study's SQLite store)")
    p.add_argument("--out", type=Path, default=None, help="report folder (default: reports/<sweep>)")
    p.add_argument("--replicates", type=int, default=1000, help="bootstrap refits (>= 1000 for decisions)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-log", action="store_true", help="do not log the report to the sweep's parent run")
    p.add_argument("--include-outside", action="store_true",
                   help="also fit the runs of the sweep's experiment outside the grids it declared (its manifest): "
                        "other epochs, data, recipes, tuned points; by default they are only listed")
    _measured_on(p)
    a = p.parse_args(argv)
    from analysis import report
    from analysis.load import load_runs
    from study.record.contract import refused

    out = a.out or Path(os.environ.get("STUDY_HOME") or ROOT) / "reports" / a.sweep
    try:
        runs = load_runs(a.sweep, a.tracking_uri or default_uri(), a.measured_on, a.include_outside)
        decisions = report.build(a.sweep, a.tracking_uri or default_uri(), out, a.replicates, a.seed, not a.no_log, runs)
    except LookupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if (why := refused(e)) is None:
            raise
        print(f"error: {why}", file=sys.stderr)
        return 2
    print("\n".join(report.summary(decisions)))
    if "not_logged" in decisions:
        print(decisions["not_logged"])
    warnings = report.all_warnings(decisions)
    print(f"{len(warnings)} warnings; report in {out}/report.html")
    return 0


def _recommend(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis recommend",
                                description="The depth, width and resolution with the lowest expected error in a budget.")
    p.add_argument("--sweep", required=True)
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--epochs", type=int, required=True)
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--latency-ms", type=float)
    budget.add_argument("--flops", type=float)
    _measured_on(p)
    a = p.parse_args(argv)
    from analysis.recommend import recommend

    try:
        choice = recommend(a.sweep, a.tracking_uri or default_uri(), a.epochs,
                           latency_ms=a.latency_ms, flops=a.flops, measured_on=a.measured_on)
    except LookupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(choice, indent=2))
    return 0


def _measured_on(p: argparse.ArgumentParser) -> None:
    p.add_argument("--measured-on", default=None, metavar="MACHINE",
                   help="latency measured alone on this machine (its measure.machine tag, printed by make measure); "
                        "default: the machine that measured every run")


if __name__ == "__main__":
    sys.exit(main())
