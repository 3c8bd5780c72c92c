"""What a setting allows, declared beside its field in study.settings.config:
`name: float = setting(0.25, interval("(0, 1]"))`. A Rule says whether a value is allowed and,
as the error says it, what is ("must be in (0, 1]"); validate() checks every field's rule.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Rule:
    ok: Callable[[Any], bool]       # the value is allowed
    text: str                       # what is allowed, as the error says it: "must be ..."


def setting(default: Any = None, rule: Rule | None = None, *, factory: Callable[[], Any] | None = None):
    """A field with its default and the rule its value keeps (validate() checks every one)."""
    meta = {"rule": rule} if rule else {}
    return field(default_factory=factory, metadata=meta) if factory else field(default=default, metadata=meta)


def _noted(text: str, note: str) -> str:
    return f"{text} ({note})" if note else text


def at_least(low: float, note: str = "") -> Rule:
    return Rule(lambda v: v >= low, _noted(f"must be >= {low}", note))


def above(low: float, note: str = "") -> Rule:
    return Rule(lambda v: v > low, _noted(f"must be > {low}", note))


def interval(text: str, note: str = "") -> Rule:
    """'(0, 1]', '[0, 0.5]', ...: the bounds and whether each is included, as written."""
    low, high = (float(x) for x in text[1:-1].split(","))
    above_low = (lambda v: v > low) if text[0] == "(" else (lambda v: v >= low)
    below_high = (lambda v: v < high) if text[-1] == ")" else (lambda v: v <= high)
    return Rule(lambda v: above_low(v) and below_high(v), _noted(f"must be in {text}", note))


def one_of(choices, suffix: str = "") -> Rule:
    return Rule(lambda v: v in choices, f"must be one of {', '.join(map(str, choices))}{suffix}")


def or_null(rule: Rule) -> Rule:
    return Rule(lambda v: v is None or rule.ok(v), f"{rule.text} or null")


def ordered_pair(high: float | None = None) -> Rule:
    """[low, high] with 0 < low <= high (<= `high` when given)."""
    return Rule(lambda v: len(v) == 2 and 0 < v[0] <= v[1] and (high is None or v[1] <= high),
                "must be [low, high] with 0 < low <= high" + (f" <= {high:g}" if high is not None else ""))
