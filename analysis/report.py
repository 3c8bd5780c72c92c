"""The report of a sweep: figures (PNG), tables (CSV), rules.json, report.md and a
self-contained report.html, written to a folder and logged to the sweep's parent run."""
from __future__ import annotations

import base64
import html
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import manifest, next_step, plots, rules, stability
from analysis.load import by_configuration, load_runs
from study.record.contract import failure_kind, find_experiment, refused

# One line under each figure: what to look for in it.
CAPTIONS = {
    "error_vs_flops_latency": "Test error against FLOPs (top) and latency (bottom), one panel per epoch budget: "
                              "points on the red Pareto front are the best models for their cost.",
    "depth_vs_width": "Error along depth scaling (blue) and width scaling (orange) from the smallest model: the "
                      "lower line wins at that compute; bands are the surface's 90% range.",
    "resolution": "Top: error as resolution grows. Bottom: the frontier's resolution against FLOPs; a fitted line "
                  "flatter than EfficientNet's dashed C^0.214 is the paper's 'slow' resolution scaling.",
    "latency": "Latency against FLOPs and activations: where colours (depth) spread at equal FLOPs, FLOPs do not "
               "predict latency.",
    "error_edf": "Share of configurations below each error, per epoch budget: a curve to the left is a regime "
                 "that trains better models.",
    "extrapolation_parity": "Error of the largest models predicted by a law fitted on the smaller ones against "
                            "their actual error: points off the dashed diagonal extrapolate badly.",
}

# The split each number of the report reads (docs/analysis.md, "Which split"): every selection
# (the frontier, the adaptive study's proposals and stops, tuning) reads minival; the answers the
# report states about the scaling rules read the test split, which nothing selected on.
SPLITS = {"depth_vs_width": "test", "flip": "test", "resolution_scaling": "minival (the frontier is a selection)",
          "extrapolation": "test"}
CONFIG_COLUMNS = ["epochs", "width", "depth", "resolution", "n_seeds", "error", "top1", "minival/top1", "flops",
                  "params", "activations", "latency_ms", "compute"]


def build(sweep: str, tracking_uri: str, out: Path, replicates: int, seed: int = 0, log: bool = True,
          runs=None) -> dict:
    """Fit what finished and write the report; points that did not finish are named in it, and
    each decision that stands on fewer points says so. With no finished point the report says
    only what is missing."""
    runs = load_runs(sweep, tracking_uri) if runs is None else runs
    if runs.table.empty and not runs.missing:
        raise LookupError(f"sweep {sweep!r} has no point runs in {tracking_uri}")
    out.mkdir(parents=True, exist_ok=True)
    study = {"scope": runs.scope, "outside": list(runs.outside), "splits": SPLITS}
    if runs.table.empty:
        return _write(sweep, tracking_uri, out, log, {"configurations": 0, "regimes": [], "bootstrap_replicates": 0,
                                                      "missing": missing_summary(runs.missing, None),
                                                      "excluded_runs": runs.excluded} | study, [], pd.DataFrame())
    configs = rules.tidy(by_configuration(runs.table))
    decisions = rules.decide(configs, replicates, seed)
    fits = decisions.pop("_fits")
    decisions["excluded_runs"] = runs.excluded
    decisions["latency"] = runs.latency
    decisions["missing"] = missing_summary(runs.missing, configs)
    decisions |= study | replication(runs.table, replicates, seed)
    decisions["next_steps"] = next_step.steps(decisions, configs, runs.sweep_file or sweep,
                                              rules.EFFICIENTNET_RESOLUTION_EXPONENT)
    figures = [plots.error_vs_cost(configs, out), plots.depth_vs_width(configs, out),
               plots.resolution(configs, decisions, out), plots.latency(configs, out), plots.edf(configs, out),
               plots.parity(decisions, out)]
    configs[[c for c in CONFIG_COLUMNS if c in configs]].to_csv(out / "configurations.csv", index=False)
    runs.table.to_csv(out / "runs.csv", index=False)
    fits.to_csv(out / "scaling_fits.csv", index=False)
    return _write(sweep, tracking_uri, out, log, decisions, figures, configs)


def _write(sweep: str, tracking_uri: str, out: Path, log: bool, decisions: dict, figures: list[Path],
           configs: pd.DataFrame) -> dict:
    decisions["runs_link"] = runs_link(sweep, tracking_uri)
    pd.DataFrame(decisions["missing"]["points"]).to_csv(out / "missing.csv", index=False)
    pd.DataFrame(decisions.get("outside", []), columns=list(OUTSIDE_COLUMNS)).to_csv(out / "outside.csv", index=False)
    (out / "rules.json").write_text(json.dumps(_clean(decisions), indent=2))
    (out / "report.md").write_text(_markdown(sweep, decisions, figures))
    (out / "report.html").write_text(_html(sweep, decisions, figures, configs))
    if log:
        try:
            _log_to_parent(sweep, tracking_uri, out, _decisions_markdown(decisions))
        except Exception as e:  # a reader of another's sweep keeps the report on disk
            if (why := refused(e)) is None:
                raise
            decisions["not_logged"] = f"the report was not logged on the sweep's run: {why}"
    return decisions


def runs_link(sweep: str, tracking_uri: str) -> str:
    """The link that opens the sweep's runs on the study's view in MLflow's UI (a local store:
    `make ui` serves it)."""
    from mlflow.tracking import MlflowClient

    from study.record.contract import runs_link as link, ui_base

    exp = find_experiment(MlflowClient(tracking_uri=tracking_uri), sweep)
    return link(ui_base(tracking_uri), exp.experiment_id) if exp else ""


def _browse(decisions: dict) -> str:
    return f"Runs in MLflow's UI (`make ui` serves a local store): {decisions['runs_link']}" \
        if decisions.get("runs_link") else ""


def after_sweep(sweep: str, tracking_uri: str, out: Path, replicates: int, seed: int = 0) -> list[str]:
    """The report a sweep makes by itself when it ends (analysis.auto): its console lines, the
    report's path first; one line, and no report, when the sweep is too small to decide anything."""
    runs = load_runs(sweep, tracking_uri)
    if runs.table.empty and not runs.missing:
        return [f"report: not made: sweep {sweep!r} has no points yet"]
    small = too_small(rules.tidy(by_configuration(runs.table))) if not runs.table.empty else None
    decisions = build(sweep, tracking_uri, out, replicates, seed, True, runs)
    return [f"report: {out / 'report.html'} (also on the sweep's parent run, under report/)",
            *([f"report: the sweep is too small to decide depth vs width ({small})"] if small else []),
            *summary(decisions)]


def too_small(configs: pd.DataFrame) -> str | None:
    """Why no epoch regime can fit the depth-vs-width surface every decision stands on; None
    when one can."""
    from analysis.depth_width import Surface

    reasons = []
    for epochs, regime in sorted(configs.groupby("epochs"), key=lambda g: g[0]):
        try:
            Surface(regime)
            return None
        except (ValueError, np.linalg.LinAlgError) as e:
            reasons.append(f"{_epochs(epochs)}: {e}")
    return "; ".join(reasons) or "no configurations"


def missing_summary(missing, configs: pd.DataFrame | None) -> dict:
    """The points that did not finish (analysis.load.missing_point), counted by epoch regime
    beside the configurations that did."""
    points = [dict(m) for m in missing]
    finished = configs.groupby("epochs").size() if configs is not None and len(configs) else pd.Series(dtype=int)
    by_regime: dict = {}
    for m in points:
        e = int(m["epochs"]) if pd.notna(m.get("epochs")) else "unknown"
        by_regime.setdefault(e, {"missing": 0, "finished_configurations": int(finished.get(e, 0))})["missing"] += 1
    statuses: dict[str, int] = {}
    for m in points:
        statuses[m["status"]] = statuses.get(m["status"], 0) + 1
    return {"count": len(points), "statuses": statuses, "by_regime": by_regime, "points": points}


def _missing(decisions: dict) -> dict:
    """The decisions' missing points (none when built from a table, not a store)."""
    return decisions.get("missing") or missing_summary((), None)


def lost_data(decisions: dict, epochs=None) -> str:
    """'' when the decision of regime `epochs` (every regime: None) stands on every point, else
    what it lost."""
    by_regime = _missing(decisions)["by_regime"]
    n = sum(v["missing"] for e, v in by_regime.items() if epochs is None or e == int(epochs))
    return f"lost data: {n} point run(s) did not finish" if n else ""


def replication(table: pd.DataFrame, replicates: int, seed: int) -> dict:
    """Each replicate's own answers (`by_replicate`), when the store holds several replicates of
    the study (analysis.stability); nothing otherwise."""
    reps = stability.replicates(table)
    if len(reps) < 2:
        return {}

    def answers(runs: pd.DataFrame) -> dict:
        alone = rules.decide(rules.tidy(by_configuration(runs)), replicates, seed)
        alone.pop("_fits", None)
        return {r["question"]: r["answer"] for r in decision_rows(alone)}

    return {"by_replicate": stability.each_alone(table, reps, answers)}


def _undecidable(decisions: dict) -> dict:
    """Regimes with no depth-vs-width decision, and why: every point failed, or too few finished."""
    # rules.json's keys are strings, the regimes list's numbers: compare them as text
    decided = {str(e) for e in decisions.get("depth_vs_width", {}).get("by_regime", {})}
    regimes = set(decisions.get("regimes", [])) | {e for e in _missing(decisions)["by_regime"] if e != "unknown"}
    out = {}
    for e in sorted((e for e in regimes if str(e) not in decided), key=float):
        lost = _missing(decisions)["by_regime"].get(e, {"missing": 0})["missing"]
        out[e] = (f"all {lost} point run(s) of this regime did not finish" if e not in decisions.get("regimes", [])
                  else "too few finished configurations to fit its surface"
                  + (f"; {lost_data(decisions, e)}" if lost else ""))
    return out


def decision_rows(decisions: dict) -> list[dict]:
    """The report's opening table: each question, its answer, decided or not, the probability
    it stands on, and whether it lost data (points that did not finish)."""
    rows = []
    dvw = decisions.get("depth_vs_width", {"by_regime": {}, "flip": {}})
    for e, d in dvw["by_regime"].items():
        rows.append(_row(f"Depth or width scaling, {_epochs(e)}", d["winner"], "P(depth better)",
                         d["p_depth_better"], lost_data(decisions, e), SPLITS["depth_vs_width"]))
        for r, x in d["by_resolution"].items():
            rows.append(_row(f"Depth or width scaling, {_epochs(e)}, at {r} px", x["winner"], "P(depth better)",
                             x["p_depth_better"], lost_data(decisions, e), SPLITS["depth_vs_width"]))
    for e, why in _undecidable(decisions).items():
        rows.append({"question": f"Depth or width scaling, {_epochs(e)}", "answer": "no decision",
                     "status": "undecided", "probability": "-", "data": why, "split": SPLITS["depth_vs_width"]})
    flip = dvw["flip"]
    if "winners" in flip:
        answer = {True: "flips", False: "does not flip", None: "undecided"}[flip["flips"]]
        rows.append(_row("Does the winner flip between epoch budgets?", answer, "P(flip)", flip["p_flip"],
                         lost_data(decisions), SPLITS["flip"]))
    for e, d in decisions.get("resolution_scaling", {"by_regime": {}})["by_regime"].items():
        answer = d["slower_than_efficientnet"].replace("_", " ")
        rows.append(_row(f"Resolution scaling slower than EfficientNet's C^0.214, {_epochs(e)}", answer,
                         "P(slower)", d["p_slower_than_efficientnet"], lost_data(decisions, e),
                         "minival" if d.get("selected_on") == "minival" else "test (no minival recorded)"))
    for row in rows if "by_replicate" in decisions else ():
        row["replicates"] = stability.stability(row["answer"], row["status"], {
            r: alone.get(row["question"]) for r, alone in decisions["by_replicate"].items()})
    return rows


ROW_COLUMNS = ("question", "answer", "status", "probability", "data", "split")
ROW_HEADERS = {"status": "decided?", "replicates": "each replicate alone"}


def row_columns(decisions: dict) -> tuple:
    """The decisions table's columns: the stability column only where several replicates are."""
    return ROW_COLUMNS + (("replicates",) if "by_replicate" in decisions else ())


def _row(question: str, answer: str, p_name: str, p: float, lost: str = "", split: str = "test") -> dict:
    return {"question": question, "answer": answer.replace("_", " "),
            "status": "undecided" if answer == "undecided" else "decided", "probability": f"{p_name} = {p:.2f}",
            "data": lost or "complete", "split": split}


def missing_lines(decisions: dict, shown: int = 10) -> list[str]:
    """What did not finish, in a sentence (the first `shown` points named; every one in the report)."""
    m = _missing(decisions)
    if not m["count"]:
        return []
    why = _counted(failure_kind(p["reason"]) for p in m["points"])
    named = ", ".join(p["name"] for p in m["points"][:shown])
    more = f" and {m['count'] - shown} more (the report lists each with its reason)" if m["count"] > shown else ""
    return [f"Missing: {m['count']} point run(s) did not finish ({why}), left out of every fit: {named}{more}. "
            "Decisions that stand on fewer points say 'lost data'."]


OUTSIDE_COLUMNS = ("name", "epochs", "width", "depth", "resolution", "status", "why")
OUTSIDE_TEXT = ("Runs of the sweep's experiment that are not points of the grid it declared, left out of every fit "
                "(--include-outside fits them too)")


def study_lines(decisions: dict, shown: int = 5) -> list[str]:
    """Which runs the report stands on: a warning for a store from before manifests, and the
    runs outside the study, counted by why (the first `shown` named; every one in the report)."""
    scope, outside = decisions.get("scope", ""), decisions.get("outside", [])
    lines = [f"warning: {scope}"] if scope.startswith("sweep ") else []
    if outside:
        why = _counted(manifest.kind(o["why"]) for o in outside)
        named = "; ".join(f"{o['name']} ({o['why']})" for o in outside[:shown])
        more = f" and {len(outside) - shown} more (listed in the report)" if len(outside) > shown else ""
        lines.append(f"Outside the study: {len(outside)} run(s) of the sweep's experiment are not points of the grid "
                     f"it declared ({why}), left out of every fit: {named}{more}. make analyze ARGS=--include-outside "
                     "fits them too.")
    return lines


def replication_lines(decisions: dict) -> list[str]:
    """Whether each replicate alone gives the pooled answers (a store with several replicates)."""
    if "by_replicate" not in decisions:
        return []
    rows = decision_rows(decisions)
    decided = [r for r in rows if r["status"] == "decided"]
    agree = sum(r["replicates"].startswith("each agrees") for r in decided)
    clash = [f"{r['question']}: {r['replicates'].removeprefix('OPPOSITE: ')}" for r in rows
             if r["replicates"].startswith("OPPOSITE")]
    reps = ", ".join(map(str, decisions["by_replicate"]))
    said = f"each replicate alone gives {agree} of the {len(decided)} decided answer(s)" if decided else \
        "the pooled study decides nothing"
    return [f"Replicates {reps}, pooled: {said}"
            + (f"; OPPOSITE answers between replicates: {'; '.join(clash)}" if clash
               else "; no two replicates decide a question opposite ways") + "."]


def _counted(kinds) -> str:
    """'3 diverged in fp32, 1 out of memory': how many of each kind, most first."""
    counts: dict[str, int] = {}
    for k in kinds:
        counts[k] = counts.get(k, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def all_warnings(decisions: dict) -> list[dict]:
    found = []
    for key, value in decisions.items():
        if key.endswith("warnings"):
            found += value
        elif isinstance(value, dict):
            found += value.get("warnings", [])
    return found


def summary(decisions: dict) -> list[str]:
    """The decisions in plain sentences: 'wins' only for a decided rule; first, what did not
    finish, and each decision that lost data says so."""
    lines = study_lines(decisions) + missing_lines(decisions) + replication_lines(decisions)
    lines += [f"{_epochs(e)}: no depth-vs-width decision: {why}." for e, why in _undecidable(decisions).items()]
    if "depth_vs_width" not in decisions:
        return lines
    dvw = decisions["depth_vs_width"]
    steps = decisions.get("next_steps", {})
    lines += [_regime_sentence(e, d, steps.get("depth_vs_width", {}).get(e)) + _lost_mark(decisions, e)
              for e, d in dvw["by_regime"].items()]
    if (flip := _flip_sentence(dvw["flip"])):
        lines.append(flip + _lost_mark(decisions) + (f" To decide it: {steps['flip']}." if "flip" in steps else ""))
    for e, d in decisions["resolution_scaling"]["by_regime"].items():
        a = d["a_resolution"]
        verdict = {"slower": "slower than EfficientNet's 0.214", "not_slower": "not slower than EfficientNet's 0.214",
                   "undecided": "undecided against EfficientNet's 0.214"}[d["slower_than_efficientnet"]]
        if d["slower_than_efficientnet"] == "undecided" and d.get("resolution_edge") \
                and a["estimate"] < rules.EFFICIENTNET_RESOLUTION_EXPONENT:
            verdict += f" ({d['resolution_edge']}: resolution could not grow further, so a small exponent may only show that edge)"
        lines.append(f"{_epochs(e)}: on the minival frontier resolution grows as C^{a['estimate']:.3f} (90% interval "
                     f"[{a['interval'][0]:.3f}, {a['interval'][1]:.3f}]): {verdict} "
                     f"(P(slower) = {d['p_slower_than_efficientnet']:.2f}); depth C^{d['a_depth']['estimate']:.3f}, "
                     f"width C^{d['a_width']['estimate']:.3f}." + _lost_mark(decisions, e)
                     + (f" To decide it: {todo}." if (todo := steps.get("resolution_scaling", {}).get(e)) else ""))
    for e, d in decisions["extrapolation"]["by_regime"].items():
        lines.append(f"{_epochs(e)}: a {d['form']} law fitted on the {d['fit_configurations']} smallest configurations "
                     f"predicts the {d['held_out']} largest with mean |log error| {d['mean_abs_log_error']:.3f}, "
                     f"bias {d['bias_log']:+.3f}; {d['prediction_interval_coverage']:.0%} of them fall in its 90% "
                     "prediction interval." + _lost_mark(decisions, e))
    return lines


def _lost_mark(decisions: dict, epochs=None) -> str:
    return f" [{lost}]" if (lost := lost_data(decisions, epochs)) else ""


def _epochs(e) -> str:
    return f"{e} epoch" + ("" if int(e) == 1 else "s")


def _gap_text(d: dict) -> str:
    gap = d["error_gap_depth_minus_width"]
    return (f"error gap depth - width {gap['estimate']:+.4f}, 90% interval [{gap['interval'][0]:+.4f}, "
            f"{gap['interval'][1]:+.4f}], P(depth better) = {d['p_depth_better']:.2f}")


def _regime_sentence(epochs, d: dict, todo: str | None = None) -> str:
    res = d["by_resolution"]
    if d["winner"] == "depends_on_resolution":
        parts = [f"{w} at {r} px" for r, w in ((r, x["winner"]) for r, x in res.items())]
        return f"{_epochs(epochs)}: the winner depends on the resolution: {', '.join(parts)} ({_gap_text(d)} overall)."
    if d["winner"] == "undecided":
        return (f"{_epochs(epochs)}: undecided between depth and width scaling ({_gap_text(d)}); "
                f"to decide it: {todo or d['would_decide']}.")
    everywhere = all(x["winner"] == d["winner"] for x in res.values())
    where = " at every resolution" if everywhere and len(res) > 1 else \
        "" if len(res) == 1 else " (per resolution: " + ", ".join(f"{x['winner']} at {r} px" for r, x in res.items()) + ")"
    return f"{_epochs(epochs)}: {d['winner']} scaling wins{where} ({_gap_text(d)})."


def _flip_sentence(flip: dict) -> str | None:
    if "winners" not in flip:
        return None
    if flip["flips"]:
        (e0, w0), (e1, w1) = flip["from"], flip["to"]
        return f"The winner flips: {w0} scaling at {_epochs(e0)}, {w1} scaling at {_epochs(e1)}."
    if flip["flips"] is False:
        return f"The winner does not flip: {next(iter(flip['winners'].values()))} scaling in every regime."
    shown = ", ".join(f"{w} at {_epochs(e)}" for e, w in flip["winners"].items())
    return f"Whether the winner flips between regimes is undecided ({shown})."


def _left_out(excluded: dict[str, int]) -> list[str]:
    if not excluded:
        return []
    why = {"rerun": "older runs of a rerun point (only the latest counts)"}
    return ["Runs left out: " + ", ".join(f"{n} {why.get(k, k)}" for k, n in sorted(excluded.items())) + "."]


def _decisions_markdown(decisions: dict) -> str:
    """The decisions table, then the decisions in sentences."""
    columns = row_columns(decisions)
    table = ["| " + " | ".join(ROW_HEADERS.get(c, c) for c in columns) + " |", "|" + "---|" * len(columns),
             *["| " + " | ".join(r[c] for c in columns) + " |" for r in decision_rows(decisions)]]
    return "\n".join([*table, "", *[f"- {s}" for s in summary(decisions)]])


def _markdown(sweep: str, decisions: dict, figures: list[Path]) -> str:
    warnings = [f"- **{w['code']}**: {w['message']}" for w in all_warnings(decisions)] or ["- none"]
    parts = [f"# Scaling report: sweep `{sweep}`", "", f"{decisions['configurations']} configurations, regimes "
             f"{decisions['regimes']} epochs, {decisions['bootstrap_replicates']} bootstrap replicates.",
             *_left_out(decisions.get("excluded_runs", {})), *_scope(decisions),
             *([f"Latency: {decisions['latency']}."] if decisions.get("latency") else []), "", _browse(decisions), "",
             "## Decisions", _decisions_markdown(decisions), "", *_missing_markdown(decisions),
             *_outside_markdown(decisions), "## Figures",
             *[f"![{p.stem}]({p.name})\n\n*{CAPTIONS.get(p.stem, p.stem)}*\n" for p in figures], "",
             "## Warnings", *warnings, "",
             "Tables: `configurations.csv`, `runs.csv`, `scaling_fits.csv`, `missing.csv`, `outside.csv`; every "
             "decision: `rules.json`."]
    return "\n".join(parts) + "\n"


def _scope(decisions: dict) -> list[str]:
    """Which runs the report stands on, and which split each kind of number reads."""
    lines = [f"Study: {decisions['scope']}."] if decisions.get("scope") else []
    return lines + ["Splits: " + "; ".join(f"{k.replace('_', ' ')} on {v}" for k, v in SPLITS.items())
                    + "; every selection (the frontier, make decide's proposals and stops, tuning) reads minival."]


def _outside_markdown(decisions: dict) -> list[str]:
    outside = decisions.get("outside", [])
    if not outside:
        return []
    return [f"## Outside the study ({len(outside)})", "", f"{OUTSIDE_TEXT}:", "",
            *_table_markdown(OUTSIDE_COLUMNS, outside)]


MISSING_COLUMNS = ("name", "epochs", "width", "depth", "resolution", "status", "reason")


def _missing_markdown(decisions: dict) -> list[str]:
    points = _missing(decisions)["points"]
    if not points:
        return ["## Missing points", "none: every point run finished", ""]
    return [f"## Missing points ({len(points)})", "", *_table_markdown(MISSING_COLUMNS, points)]


def _table_markdown(columns: tuple, rows: list[dict]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
            *[("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |") for r in rows], ""]


def _table_html(columns: tuple, rows: list[dict]) -> str:
    return pd.DataFrame(rows, columns=list(columns)).to_html(index=False, float_format="%.4g")


TEMPLATE = Path(__file__).parent / "templates" / "report.html.j2"


@lru_cache(maxsize=1)
def _page():
    """The report's template, its layout's line breaks and indentation removed (the page is one line)."""
    import jinja2

    text = "".join(line.strip() for line in TEMPLATE.read_text().splitlines())
    env = jinja2.Environment(autoescape=False, undefined=jinja2.StrictUndefined)
    env.filters["esc"] = lambda value: html.escape(str(value))
    return env.from_string(text)


def _html(sweep: str, decisions: dict, figures: list[Path], configs: pd.DataFrame) -> str:
    points = _missing(decisions)["points"]
    outside = decisions.get("outside", [])
    return _page().render(
        sweep=sweep, runs_link=decisions.get("runs_link", ""), scope=_scope(decisions),
        columns=row_columns(decisions), headers=ROW_HEADERS, rows=decision_rows(decisions), summary=summary(decisions),
        n_missing=len(points), missing_table=_table_html(MISSING_COLUMNS, points) if points else "",
        n_outside=len(outside), outside_text=OUTSIDE_TEXT,
        outside_table=_table_html(OUTSIDE_COLUMNS, outside) if outside else "",
        figures=[{"png": base64.b64encode(p.read_bytes()).decode(), "name": p.stem,
                  "caption": CAPTIONS.get(p.stem, p.stem)} for p in figures],
        warnings=[f"{w['code']}: {w['message']}" for w in all_warnings(decisions)] or ["none"],
        configs_table=configs[[c for c in CONFIG_COLUMNS if c in configs]].to_html(index=False, float_format="%.4g"),
        rules_json=json.dumps(_clean(decisions), indent=1))


def _clean(obj):
    """JSON-safe: numpy scalars to Python, NaN to null."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _log_to_parent(sweep: str, tracking_uri: str, out: Path, note: str) -> None:
    """The report as artifacts of the sweep's parent run, and its decisions as the run's
    description (what the UI shows when the parent run is opened)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = find_experiment(client, sweep)
    parents = client.search_runs([exp.experiment_id], "tags.role = 'parent'", max_results=1)
    if parents:
        client.log_artifacts(parents[0].info.run_id, str(out), artifact_path="report")
        client.set_tag(parents[0].info.run_id, "mlflow.note.content",
                       f"{note}\n\nThe whole report: artifact `report/report.html`.")
