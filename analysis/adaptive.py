"""Where an adaptive study trains next: a pure function of the runs recorded so far and the
candidate set (`propose`). The study side (study/decide.py) trains what it proposes; nothing
here imports the training package, and nothing here changes the analysis it reads.

Split. Every proposal and every stop reads the runs' minival error (`configurations`): the
adaptive study selects what to train and when to stop on minival, never on the test split
the report states its answers on, so the stopping rule cannot pick a look at which the test
split happens to decide.

Rules. A study asks about `regime` (depth vs width in each epoch regime), `resolution` (the
same at each resolution of a regime) and `flip` (does the winner change between regimes; it
rests on the regime rules). A rule is *settled* when the analysis (analysis.depth_width), on minival,
decides it and its draws put it beyond `settle_level` (0.95; per resolution with the
analysis's Bonferroni share). That is stricter than the report's 0.90 on purpose: an adaptive
study looks at its data after every round, and stopping at the first look that decides would
name winners on ties more often than the report's level allows. The study's final statement
is always the report's.

Initial design. A regime that cannot be fitted yet gets the depth path and the width path
from its smallest model (what the statistic reads) at its two smallest resolutions, then the
cheapest other points until its surface fits with spare degrees of freedom (which brings in
every other resolution). Rounds then buy what the larger resolutions' rules need.

Value of a candidate. A fitted regime plans on its own surface (analysis/value.py): the
chance each open rule is settled once the candidate is trained.
Settling one rule often takes several points at once, so candidates are valued in sequence:
a greedy design orders them by how much they shrink the open rules' variances per unit of
cost (training FLOPs, or what the study side adds to them), and the value of each prefix is
the expected number of rules it settles per share of the full grid's cost. A regime is worth
a round when some prefix beats `worth` (default 4.5 rules per grid); the round trains the
prefix up to `growth` x the compute spent so far (at least `jobs` candidates, so parallel
jobs stay busy), within the budget left. The defaults were set on simulated studies
(analysis/simulate.py, `make bench ARGS="--only adaptive"`) on other random streams than
the benchmark's.

Order. With `order=cost` regimes go cheapest first: a regime starts when every cheaper one is
settled or has nothing worth its cost. Its first batch adds to its initial design what the
cheaper regime's surface rates most valuable: a prior on where to look, never on the answer,
which only the regime's own runs give.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.depth_width import MIN_RESIDUAL_DOF, centred_design, depth_vs_width
from analysis.fit import training_compute
from analysis.load import by_configuration
from analysis.rules import COLUMNS, tidy
from analysis.uncertainty import LEVEL
from analysis.value import Plan, own_plan, prior_plan, sequence

RULES = ("regime", "resolution", "flip")
ORDERS = ("cost", "together")
SPARE_DOF = 2          # the initial design leaves MIN_RESIDUAL_DOF + this
PATH_RESOLUTIONS = 2   # the initial design's paths run at this many of the smallest resolutions
AXES = ["depth", "width", "resolution"]
CANDIDATE_COLUMNS = ["epochs", "depth", "width", "resolution", "seed", "compute", "new"]
BATCH_COLUMNS = [*CANDIDATE_COLUMNS, "cost", "value", "why"]


@dataclass(frozen=True)
class Settings:
    rules: tuple[str, ...] = RULES
    order: str = "cost"
    settle_level: float = 0.95
    worth: float = 4.5      # expected rules settled per full grid's compute a candidate must beat
    growth: float = 0.3     # a round spends up to this share of the compute spent so far
    jobs: int = 1
    draws: int = 1000       # the analysis's draws (the report's --replicates)
    seed: int = 0           # the analysis's seed

    def check(self) -> None:
        if not self.rules or set(self.rules) - set(RULES):
            raise ValueError(f"rules={list(self.rules)}: allowed are one or more of {list(RULES)}")
        if self.order not in ORDERS:
            raise ValueError(f"order={self.order!r}: allowed are {list(ORDERS)}")
        if not LEVEL <= self.settle_level < 1:
            raise ValueError(f"settle_level={self.settle_level}: allowed is {LEVEL} <= level < 1")
        if self.worth < 0 or self.growth <= 0 or self.jobs < 1:
            raise ValueError("worth must be >= 0, growth > 0 and jobs >= 1")


@dataclass
class Rule:
    name: str
    epochs: int
    resolution: int | None          # None: the regime's rule
    winner: str | None              # the analysis's decision (None: regime not fitted yet)
    p_depth_better: float | None
    settled: bool


@dataclass
class Proposal:
    decisions: dict                 # analysis.depth_width.depth_vs_width of the runs so far
    rules: list[Rule]               # every rule asked about, with its state
    batch: pd.DataFrame             # candidates to train next (BATCH_COLUMNS)
    stop: str | None                # why the study ends, or None
    spent: float                    # training compute recorded so far
    predicted: dict = field(default_factory=dict)  # rule name -> P(settled once the batch is trained)

    @property
    def settled(self) -> dict[str, bool]:
        """Each rule asked about: settled or not (what the previous round's `predicted` is scored on)."""
        return {r.name: r.settled for r in self.rules}


# --- rules and their state ---------------------------------------------------------------

def rule_name(epochs: int, resolution: int | None = None) -> str:
    e = f"{epochs} epoch" + ("" if epochs == 1 else "s")
    return f"depth vs width at {e}" + (f", {resolution} px" if resolution is not None else "")


def _beyond(p: float | None, level: float) -> bool:
    return p is not None and min(p, 1 - p) <= (1 - level) / 2


def rule_states(decisions: dict, regimes: list[int], resolutions: dict[int, list[int]],
                settings: Settings) -> list[Rule]:
    """Every rule asked about, with the analysis's decision and whether it is settled."""
    by_regime, out = decisions["by_regime"], []
    for e in regimes:
        d = by_regime.get(e)
        if "regime" in settings.rules or "flip" in settings.rules:
            out.append(_regime_rule(e, d, settings.settle_level))
        if "resolution" in settings.rules:
            level = 1 - (1 - settings.settle_level) / len(resolutions[e])
            for r in resolutions[e]:
                x = (d or {}).get("by_resolution", {}).get(r)
                out.append(Rule(rule_name(e, r), e, r, x and x["winner"], x and x["p_depth_better"],
                                bool(x) and x["winner"] != "undecided" and _beyond(x["p_depth_better"], level)))
    if "flip" in settings.rules and len(regimes) > 1:
        flip = decisions["flip"]
        regime_settled = {r.epochs: r.settled for r in out if r.resolution is None}
        rests_on = regimes if flip.get("flips") is False else [e for e, _ in (flip.get("from"), flip.get("to"))] \
            if flip.get("flips") else []
        settled = flip.get("flips") is not None and all(regime_settled[e] for e in rests_on)
        winner = None if flip.get("flips") is None else ("flips" if flip["flips"] else "does not flip")
        out.append(Rule("flip", 0, None, winner, flip.get("p_flip"), settled))
    return out


def _regime_rule(e: int, d: dict | None, level: float) -> Rule:
    if d is None:
        return Rule(rule_name(e), e, None, None, None, False)
    if d["winner"] == "depends_on_resolution":  # settled when two resolutions settle on different winners
        res_level = 1 - (1 - level) / len(d["by_resolution"])
        firm = {x["winner"] for x in d["by_resolution"].values()
                if x["winner"] != "undecided" and _beyond(x["p_depth_better"], res_level)}
        settled = len(firm) > 1
    else:
        settled = d["winner"] != "undecided" and _beyond(d["p_depth_better"], level)
    return Rule(rule_name(e), e, None, d["winner"], d["p_depth_better"], settled)


# --- initial design ----------------------------------------------------------------------

def _rank(frame: pd.DataFrame, n_res: int) -> tuple[int, int]:
    """(rank, columns) of the surface's design for these configurations."""
    X = centred_design(frame, n_res)[0]
    return int(np.linalg.matrix_rank(X)), X.shape[1]


def _fits(frame: pd.DataFrame, n_res: int) -> bool:
    if min(frame["depth"].nunique(), frame["width"].nunique()) < 3 or frame["resolution"].nunique() < n_res:
        return False
    rank, p = _rank(frame, n_res)
    return rank == p and len(frame) - p >= MIN_RESIDUAL_DOF + SPARE_DOF


def initial_design(configs: pd.DataFrame) -> pd.DataFrame:
    """The configurations of one regime to train first (a subset of `configs`, the regime's
    declared configurations with `compute` and `trained`): the depth and width paths from the
    smallest model at every resolution, then the cheapest others until the surface fits. A pure
    function of the table, computed once per table (every round of a study asks again)."""
    key = tuple(configs[[*AXES, "compute", "trained"]].itertuples())
    if key not in _designs:
        if len(_designs) >= 256:
            _designs.clear()
        _designs[key] = _initial_design(configs)
    return _designs[key].copy()


_designs: dict[tuple, pd.DataFrame] = {}


def _initial_design(configs: pd.DataFrame) -> pd.DataFrame:
    n_res = configs["resolution"].nunique()
    if not _fits(configs, n_res):
        raise ValueError(f"{len(configs)} configurations (depths {sorted(configs['depth'].unique())}, widths "
                         f"{sorted(configs['width'].unique())}, resolutions {sorted(configs['resolution'].unique())}) "
                         "cannot fit the depth-vs-width surface: it needs 3 or more depths and widths and "
                         f"{MIN_RESIDUAL_DOF + SPARE_DOF} configurations more than its terms")
    on_path = (configs["width"] == configs["width"].min()) | (configs["depth"] == configs["depth"].min())
    low = configs["resolution"].isin(sorted(configs["resolution"].unique())[:PATH_RESOLUTIONS])
    chosen = configs[(on_path & low) | configs["trained"]]
    rest = configs.drop(chosen.index).sort_values("compute")
    while not _fits(chosen, n_res):
        rank = _rank(chosen, n_res)[0] if len(chosen) > 3 else 0
        raising = [i for i in rest.index if _rank(pd.concat([chosen, rest.loc[[i]]]), n_res)[0] > rank]
        pick = raising[0] if raising and rank < _rank(configs, n_res)[1] else rest.index[0]
        chosen, rest = pd.concat([chosen, rest.loc[[pick]]]), rest.drop(pick)
    return chosen[~chosen["trained"]]


# --- the proposal ------------------------------------------------------------------------

def configurations(runs: pd.DataFrame) -> pd.DataFrame:
    """The analysis's configuration table of a runs table (empty stays empty), its `error` read
    on minival: every proposal and every stop selects, so it never reads the test split the
    report states its answers on (analysis.rules.selection_error)."""
    if not len(runs):
        return pd.DataFrame(columns=["epochs", *AXES, "compute"])
    return tidy(by_configuration(on_minival(runs)))


def on_minival(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs with `error` = 1 - minival/top1 (runs recorded without minival keep test error)."""
    if "minival/top1" not in runs:
        return runs
    return runs.assign(error=(1 - runs["minival/top1"]).fillna(runs["error"]))


def spent_compute(runs: pd.DataFrame) -> float:
    if runs.empty:
        return 0.0
    return float(training_compute(runs["flops"], runs["data.train_images"], runs["recipe.epochs"]).sum())


def propose(runs: pd.DataFrame, candidates: pd.DataFrame, grid_cost: float, budget_left: float,
            settings: Settings = Settings()) -> Proposal:
    """What to train next. `runs`: one row per recorded run (analysis.load's table).
    `candidates`: CANDIDATE_COLUMNS, one row per declared configuration not trained yet
    (new=True, with the seed to train) and per one more seed of a trained one (new=False);
    `compute` is its training FLOPs; an optional `cost` is what value is weighed against
    (default: `compute`; the study side adds each run's fixed overhead). `grid_cost`: the full
    declared grid's cost, the unit of cost. `budget_left`: the cost the study may still spend
    (inf: none)."""
    settings.check()
    if "cost" not in candidates:
        candidates = candidates.assign(cost=candidates["compute"])
    configs = configurations(runs)
    decisions = depth_vs_width(configs, settings.draws, settings.seed) if len(configs) else \
        {"by_regime": {}, "flip": {"flips": None, "reason": "nothing recorded"}, "warnings": []}
    regimes = sorted({int(e) for e in candidates["epochs"]} | {int(e) for e in configs["epochs"]})
    declared = pd.concat([candidates[candidates["new"]][["epochs", *AXES, "compute"]],
                          configs[["epochs", *AXES, "compute"]]]).drop_duplicates(["epochs", *AXES])
    resolutions = {e: sorted(int(r) for r in declared[declared["epochs"] == e]["resolution"].unique()) for e in regimes}
    rules = rule_states(decisions, regimes, resolutions, settings)
    spent = spent_compute(runs)
    if all(r.settled for r in rules):
        return Proposal(decisions, rules, _empty(), "every rule asked about is decided", spent)

    picked, predicted = [], {}
    for e in regimes:
        open_rules = [r for r in rules if r.epochs == e and not r.settled]
        if not open_rules:
            continue
        regime = configs[configs["epochs"] == e].reset_index(drop=True)
        first = _empty()
        if e in decisions["by_regime"]:
            plan = own_plan(regime, open_rules, settings.settle_level)
        else:
            first, plan = _first_batch(e, regime, declared, candidates, configs, decisions, open_rules, settings)
        left = budget_left - float(first["cost"].sum())
        if left < 0:
            return Proposal(decisions, rules, _empty(), f"the budget is spent: it cannot pay for the initial design "
                            f"of {rule_name(e)}", spent)
        more = _empty()
        if plan is not None:
            pool = candidates[(candidates["epochs"] == e) & ~_in(candidates, first)]
            seq = sequence(plan, pool, grid_cost, left)
            round_compute = settings.growth * max(spent, float(first["compute"].sum()))
            # a prior plan's gap is the cheaper regime's, not this one's: it forecasts nothing
            more, p = _round(seq, plan, round_compute, settings.jobs - len(first), settings.worth,
                             forecast=e in decisions["by_regime"])
            predicted |= p
        if len(first) or len(more):
            picked += [b for b in (first, more) if len(b)]
            if settings.order == "cost":
                break
    batch = pd.concat(picked, ignore_index=True) if picked else _empty()
    if len(batch):
        return Proposal(decisions, rules, batch, None, spent, predicted)
    affordable = candidates[candidates["cost"] <= budget_left]
    open_names = ", ".join(r.name for r in rules if not r.settled)
    if affordable.empty:
        return Proposal(decisions, rules, batch, f"the budget is spent ({open_names} still open)", spent)
    return Proposal(decisions, rules, batch, f"no candidate is worth its cost ({open_names} still open)", spent)


def settle_outcomes(predicted: dict[str, float], settled: dict[str, bool]) -> list[tuple[float, bool]]:
    """(predicted P(settled), settled) of each rule a round predicted, read from the rule
    states ({name: settled}) of the round after it."""
    return [(p, settled[name]) for name, p in predicted.items() if name in settled]


def settle_calibration(predictions: list[tuple[float, bool]], edges=(0, 0.2, 0.4, 0.6, 0.8, 1.0)) -> list[dict]:
    """Predicted P(settled) against how often the rules settled, by bins of the prediction."""
    p = np.array([q for q, _ in predictions], float)
    hit = np.array([s for _, s in predictions], float)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (p >= lo) & ((p < hi) if hi < edges[-1] else (p <= hi))
        if inside.any():
            out.append({"bin": (lo, hi), "n": int(inside.sum()), "predicted": float(p[inside].mean()),
                        "settled": float(hit[inside].mean())})
    return out


def _in(frame: pd.DataFrame, rows: pd.DataFrame) -> pd.Series:
    keys = {tuple(r) for r in rows[["epochs", *AXES, "seed"]].to_numpy()} if len(rows) else set()
    return pd.Series([tuple(r) in keys for r in frame[["epochs", *AXES, "seed"]].to_numpy()], index=frame.index)


def _empty() -> pd.DataFrame:
    return pd.DataFrame(columns=BATCH_COLUMNS)


def _first_batch(e, regime, declared, candidates, configs, decisions, open_rules,
                 settings) -> tuple[pd.DataFrame, Plan | None]:
    """A regime's initial design, and the plan of its first round: on the nearest cheaper
    fitted regime's surface, or None when there is none."""
    mine = declared[declared["epochs"] == e].reset_index(drop=True)
    trained = {tuple(r) for r in regime[AXES].to_numpy()}
    mine["trained"] = [tuple(r) in trained for r in mine[AXES].to_numpy()]
    chosen = initial_design(mine)
    new = candidates[candidates["new"] & (candidates["epochs"] == e)]
    rows = new.merge(chosen[AXES], on=AXES).assign(
        value=np.nan, why="initial design: the depth and width paths at the smallest resolutions, and what the "
                          "surface needs to fit")
    for c in sorted((c for c in decisions["by_regime"] if c < e), reverse=True):
        design_rows = pd.concat([regime[AXES], rows[AXES]], ignore_index=True)
        try:
            return rows, prior_plan(configs[configs["epochs"] == c].reset_index(drop=True), design_rows,
                                    open_rules, settings.settle_level)
        except ValueError:
            continue
    return rows, None


def _round(seq: list[dict], plan: Plan, round_compute: float, jobs: int,
           worth: float, forecast: bool = True) -> tuple[pd.DataFrame, dict[str, float]]:
    """The prefix of a greedy sequence a round trains, or nothing when no prefix settles
    `worth` rules per full grid's cost: up to `round_compute` training FLOPs (at least `jobs`
    candidates); with each open rule's predicted chance of being settled once it is trained
    (none unless `forecast`: the plan is the regime's own surface)."""
    ratios = [s["gain"] / s["cost"] for s in seq]
    if not ratios or max(ratios) < worth:
        return _empty(), {}
    target = int(np.argmax(ratios))
    take = [s for i, s in enumerate(seq) if s["compute"] <= round_compute or i < max(jobs, 1)]
    p = take[-1]["p"]  # each open rule's chance once the whole round is trained
    k = int(np.argmax(p))
    rows = []
    for s in take:
        c = s["candidate"]
        chance = f"after this round P(settling {plan.rules[k].name}) {p[k]:.2f}" if forecast else \
            "planned on a cheaper regime's surface: where to look, no forecast"
        why = (f"{'new configuration' if c['new'] else 'one more seed'}; helps {s['helps']} most; {chance}; "
               f"worth {ratios[target] * 0.01:.3f} rules per 1% of the grid's cost")
        rows.append(c.to_dict() | {"value": s["gain"], "why": why})
    return pd.DataFrame(rows, columns=BATCH_COLUMNS), \
        {r.name: float(q) for r, q in zip(plan.rules, p)} if forecast else {}


def candidates(declared: pd.DataFrame, runs: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """The candidate set: every declared configuration (columns epochs, depth, width,
    resolution, compute) not trained yet, at `seed`, and one more seed of every trained one."""
    out = declared[["epochs", *AXES, "compute"]].copy()
    out["seed"], out["new"] = seed, True
    if len(runs):
        last = runs.rename(columns=COLUMNS).groupby(["epochs", *AXES])["seed"].max().rename("last").reset_index()
        out = out.merge(last, on=["epochs", *AXES], how="left")
        trained = out["last"].notna()
        out.loc[trained, "seed"] = out.loc[trained, "last"] + 1
        out.loc[trained, "new"] = False
        out = out.drop(columns="last")
    out["seed"] = out["seed"].astype(int)
    return out[CANDIDATE_COLUMNS]
