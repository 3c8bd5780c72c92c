"""Undecided says what to run next: every undecided line of the report (and so of the console
after a sweep) ends with the command that would decide it and what it would cost."""
from __future__ import annotations

import re

import numpy as np

from analysis import next_step, report, rules, simulate
from analysis.load import by_configuration

COMMAND = re.compile(r'make sweep SWEEP=tiny ARGS="model\.width=[\d.,]+ model\.depth=[\d,]+ data\.resolution=[\d,]+ '
                     r'(recipe\.epochs=[\d,]+ )seeds=(\d+)" \((\d+) more runs, '
                     r'[\d.e+]+ training FLOPs, about [\d.]+ (min|h) of training on the machine that trained these '
                     r'runs; or make decide SWEEP=tiny BUDGET=\d+m\)')


def _decisions(truths: dict, noise: float, seed: int) -> tuple[dict, object]:
    configs = rules.tidy(by_configuration(simulate.study(truths, np.random.default_rng(seed), noise, 1)))
    decisions = rules.decide(configs, 200, 0)
    decisions.pop("_fits")
    decisions["next_steps"] = next_step.steps(decisions, configs, "tiny", rules.EFFICIENTNET_RESOLUTION_EXPONENT)
    return decisions, configs


def test_every_undecided_line_ends_with_the_command_that_would_decide_it_and_its_cost():
    decisions, configs = _decisions({10: simulate.TRUTHS["tie"], 40: simulate.TRUTHS["depth"]}, 0.15, 3)
    dvw = decisions["depth_vs_width"]["by_regime"]
    assert dvw[10]["winner"] == "undecided" and dvw[40]["winner"] == "depth"
    lines = report.summary(decisions)
    undecided = [x for x in lines if re.search("undecided between|is undecided|undecided against", x)]
    assert len(undecided) >= 2  # the tie's regime and the flip at least
    for line in undecided:
        assert COMMAND.search(line) or "no more seeds of this grid" in line, line
    regime = next(x for x in lines if x.startswith("10 epochs: undecided"))
    found = COMMAND.search(regime)
    assert found.group(1) == "recipe.epochs=10 "  # only the regime it stands on, and exactly the grid's points:
    assert 'ARGS="model.width=0.25,0.5,1 model.depth=14,26,50 data.resolution=16,24,32 recipe.epochs=10 ' in regime
    seeds = int(found.group(2))
    assert int(found.group(3)) == (seeds - 1) * len(configs[configs["epochs"] == 10])  # the missing runs
    flip = next(x for x in lines if x.startswith("Whether the winner flips"))
    assert f"seeds={seeds}" in flip  # the flip waits on the same regime


def test_the_seeds_asked_for_grow_as_the_gap_shrinks_against_its_noise():
    assert next_step.seeds_needed(z=1.0, bound=1.645, now=1) > next_step.seeds_needed(z=1.5, bound=1.645, now=1)
    assert next_step.seeds_needed(z=1.0, bound=1.645, now=2) == 2 * next_step.seeds_needed(z=1.0, bound=1.645, now=1) \
        or abs(next_step.seeds_needed(z=1.0, bound=1.645, now=2) - 2 * next_step.seeds_needed(z=1.0, bound=1.645, now=1)) <= 1
    assert next_step.seeds_needed(z=0.0, bound=1.645, now=1) is None
    assert next_step.seeds_needed(z=1.6, bound=1.645, now=3) >= 4  # always more than today


def test_a_frontier_at_the_grids_edge_asks_for_a_larger_resolution_at_the_datas_for_other_data():
    configs = __import__("pandas").DataFrame({"epochs": [2] * 4, "resolution": [12, 20, 12, 20],
                                              "native_resolution": [28] * 4})
    at_grid = {"a_resolution": {"estimate": 0.1, "interval": [0.0, 0.2]},
               "resolution_edge": "the frontier reaches the grid's largest resolution (20 px)"}
    assert next_step.resolution_scaling(at_grid, configs, 2, "default", 0.214).endswith(
        'make sweep SWEEP=default ARGS="recipe.epochs=2 data.resolution=12,20,28"')  # up to the native 28 px
    at_native = at_grid | {"resolution_edge": "the frontier reaches the data's native 28 px"}
    assert next_step.resolution_scaling(at_native, configs, 2, "default", 0.214).endswith(
        "only data with larger images would decide it")


def test_seeds_cannot_shrink_the_lack_of_fit():
    """With half of a statistic's variance from seeds, the seeds needed rise, and where the
    lack of fit alone is wider than the estimate allows, no number of seeds is named."""
    all_seeds = next_step.seeds_needed(z=1.2, bound=1.645, now=2)
    assert next_step.seeds_needed(z=1.2, bound=1.645, now=2, seed_share=1.0) == all_seeds
    assert next_step.seeds_needed(z=1.5, bound=1.645, now=2, seed_share=0.5) > next_step.seeds_needed(z=1.5, bound=1.645, now=2)
    assert next_step.seeds_needed(z=1.0, bound=1.645, now=2, seed_share=0.5) is None  # 0.37 < 0.5 of it stays


def test_a_surface_never_claims_less_noise_than_its_own_seeds_show():
    """A residual on few degrees of freedom can fall below the noise the configurations' seeds
    show (an adaptive study that looks every round meets that chance): the decision then uses
    the seeds' variance, and the same means without seeds decide as before."""
    from analysis.depth_width import Surface, depth_vs_width, seed_floor

    exact = simulate.configurations(simulate.runs(simulate.TRUTHS["depth"], 40, np.random.default_rng(0), noise=0.0))
    alone = depth_vs_width(exact, 200, 0)["by_regime"][40]
    assert alone["winner"] == "depth" and alone["noise"]["seed_share"] is None
    seeded = exact.assign(n_seeds=3, error_var=exact["error"] ** 2)  # seeds: 100% relative sd per run
    s = Surface(seeded)
    assert seed_floor(seeded) > s.residual_var and s.sigma2 == seed_floor(seeded)
    d = depth_vs_width(seeded, 200, 0)["by_regime"][40]
    assert d["winner"] == "undecided" and d["noise"]["seed_share"] == 1.0
    assert d["log_gap"]["se"] > 10 * alone["log_gap"]["se"]
