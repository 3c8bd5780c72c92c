"""Do the answers replicate? A store can hold several replicates of a study (`replicate=K`: the
whole grid again with independent training randomness, as other points). The report pools them
(a replicate's runs count as more seeds of each configuration) and says, per decision, what each
replicate alone decides: the stability column.

    reps = replicates(table)                                   # [0, 1, 2]
    alone = each_alone(table, reps, decide)                    # replicate -> {question: answer}
    stability("depth", "decided", [alone[r].get(q) for r in reps])  -> "each agrees (3 of 3)"

A replicate that decides the opposite of the pooled answer, or of another replicate, is named:
an answer that flips with the training randomness is not an answer.
"""
from __future__ import annotations

from typing import Callable

import pandas as pd

COLUMN = "replicate"  # the run record's param; runs from before it are replicate 0
OPPOSITES = {"depth": "width", "width": "depth", "slower": "not slower", "not slower": "slower",
             "flips": "does not flip", "does not flip": "flips"}
UNDECIDED = ("undecided", "no decision", None)


def replicates(table: pd.DataFrame) -> list[int]:
    """The replicates a table of runs holds."""
    if COLUMN not in table:
        return [0]
    return sorted({int(r) for r in table[COLUMN].fillna(0)})


def only(table: pd.DataFrame, replicate: int) -> pd.DataFrame:
    if COLUMN not in table:
        return table
    return table[table[COLUMN].fillna(0).astype(int) == replicate]


def each_alone(table: pd.DataFrame, reps: list[int], answers: Callable[[pd.DataFrame], dict]) -> dict[int, dict]:
    """Each replicate's own answers (`answers`: runs -> {question: answer}); a replicate whose
    runs cannot be fitted answers nothing."""
    out = {}
    for r in reps:
        try:
            out[r] = answers(only(table, r))
        except (ValueError, LookupError, KeyError):
            out[r] = {}
    return out


def opposite(a, b) -> bool:
    return OPPOSITES.get(a) == b


def stability(answer: str, status: str, alone: dict[int, str | None]) -> str:
    """What the replicates alone say of one question whose pooled answer is `answer`."""
    said = {r: a if a not in UNDECIDED else "undecided" for r, a in alone.items()}
    clash = [(r, a) for r, a in said.items() if opposite(a, answer)]  # against the pooled answer
    if not clash and any(opposite(a, b) for a in said.values() for b in said.values()):  # among themselves
        clash = [(r, a) for r, a in said.items() if a != "undecided"]
    if clash:
        return "OPPOSITE: " + ", ".join(f"replicate {r} alone says {a}" for r, a in clash)
    n = len(said)
    if status != "decided":
        decided = {r: a for r, a in said.items() if a != "undecided"}
        return f"undecided in each ({n})" if not decided else \
            "; ".join(f"replicate {r} alone: {a}" for r, a in decided.items()) + "; the others undecided"
    agree = [r for r, a in said.items() if a == answer]
    if len(agree) == n:
        return f"each agrees ({n} of {n})"
    return f"{len(agree)} of {n} agree; " + ", ".join(f"replicate {r} alone: {a}" for r, a in said.items()
                                                       if a != answer)
