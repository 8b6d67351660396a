"""What a lead's score is made of at an instant, as lua/lib.lua `explain` computed it.

Every transition carries one (and its handoff is built from it) and so does every read
(`LeadStore.view` and `.top`: GET /leads/{id}, /leads/top, `leadpulse score` and `top`): one Lua
function on the same state at the same instant gives the same numbers. Here codes get their
names back (rule codes → ids, category indexes → names); nothing is computed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .model import GRADES, UNKNOWN_GRADE


class Contribution(NamedTuple):
    rule_id: str
    category: str
    #: the rule's points at the instant, after decay, scaled by its category's weight and cap
    points: float
    #: epoch ms of its latest occurrence; None for a fit rule
    last_occurred_at: int | None


@dataclass(frozen=True, slots=True)
class Explanation:
    score: float
    #: per category (in the model's order), its points weighted and capped: they sum to the score
    breakdown: dict[str, float]
    #: the raw fit points (no weight, no cap) and their grade: A-D, or U (too little known)
    fit_score: float
    fit_grade: str
    #: largest |points| first; those of a category sum to its breakdown
    contributions: tuple[Contribution, ...]
    #: share of the model's fit traits the lead's traits hold (0..1; docs/scoring.md §5)
    completeness: float = 0.0


@dataclass(frozen=True, slots=True)
class LeadView:
    """A lead read at the instant `at` (epoch ms)."""

    lead_id: str
    at: int
    #: the stage recorded at the last evaluation (a decayed lead keeps it until swept)
    stage: str
    #: the lead's clock: the latest event time applied (or decay demotion swept)
    last_event_at: int
    model_version: str
    explanation: Explanation
    #: a recycled lead (docs/scoring.md §10): epoch ms until which its score cannot promote it
    cooldown_until: int | None = None


def _largest(c: Contribution) -> float:
    return abs(c.points)


def explained(raw: Sequence[Any], rules: Mapping[int, str], categories: Sequence[str]) -> Explanation:
    """An explanation as lib.lua `explain` returns it (unpacked). `rules`: rule code -> id
    (LeadStore.rule_names; "#<code>" for a code it lacks); `categories`: the model's, in the
    order of the spec (spec.lua_spec)."""
    score, fit, grade, breakdown, each, *more = raw  # completeness: absent from older records
    listed = [
        Contribution(rules.get(code) or f"#{code}", categories[c - 1], float(points), None if last is False else last)
        for code, c, points, last in zip(each[::4], each[1::4], each[2::4], each[3::4])
    ]
    listed.sort(key=_largest, reverse=True)  # stable: ties stay in code order
    return Explanation(
        score=float(score),
        breakdown={categories[c - 1]: float(v) for c, v in zip(breakdown[::2], breakdown[1::2])},
        fit_score=float(fit),
        # a rank: 3 is A (engine.grade_rank), -1 is U (lib.lua fit_grade)
        fit_grade=UNKNOWN_GRADE if grade < 0 else GRADES[len(GRADES) - 1 - grade],
        contributions=tuple(listed),
        completeness=float(more[0]) if more else 0.0,
    )
