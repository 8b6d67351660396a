"""What the scripts need, beyond scores and caps, to decide as a marketer means it (issue 13):
stage entry conditions, unknown fit and completeness, idle decay. Entries of the model spec
(spec.lua_spec); lua/lib.lua decides with them (docs/scoring.md §4 Idle decay, §5 Stages).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .engine import grade_rank
from .model import ScoringModel, Stage

#: idle gaps a lead keeps when the model sets no max_event_age (else: those a late event can reach)
IDLE_GAPS_KEPT = 32


def stage_spec(stage: Stage, categories: list[str]) -> list[Any]:
    """[min_score, grade rank, min_completeness | false, [points, category index...] | false,
    min_intent | false] (lib.lua `enters`, `fit_holds`)."""
    points: list[Any] | bool = False
    if stage.min_points is not None:
        points = [stage.min_points.points, *(categories.index(c) + 1 for c in stage.min_points.from_)]
    return [stage.min_score, grade_rank(stage.min_grade), stage.min_completeness or False, points,
            stage.min_intent or False]


def extend_spec(spec: dict[str, Any], model: ScoringModel, codes: Mapping[str, int]) -> None:
    """Add the stages, the intent rules, the fit traits' count, the U threshold and the idle decay
    to `spec`."""
    categories = list(model.categories)
    spec["stages"] = [stage_spec(s, categories) for s in model.stages]
    size = max(codes.values(), default=0)
    intent: list[bool] = [False] * size
    for rule in model.rules:
        intent[codes[rule.id] - 1] = rule.intent
    spec["intent"] = intent
    spec["nfit"] = len(model.fit.traits)
    spec["unknown_below"] = model.fit.unknown_below
    decay = model.idle_decay
    if decay is None:
        return
    idle: list[bool] = [False] * size
    for rule in model.rules:
        idle[codes[rule.id] - 1] = model.is_idle(rule)
    # How far behind the lead's latest activity an event can still land: older gaps can go.
    horizon = -1 if model.max_event_age is None else model.max_event_age + model.clock_skew
    spec["idle"] = {"rules": idle, "every": decay.after, "keep": 1 - decay.lose_percent / 100,
                    "horizon": horizon, "gaps": IDLE_GAPS_KEPT}
    # The due search's span and the top index's rank (lib.lua) go by half-lives: idle decay's is
    # the one losing the same share per period continuously (model.IdleDecay.half_life_ms).
    half_life = decay.half_life_ms
    spec["hmin"] = min(spec["hmin"], half_life)
    spec["hmax"] = max(spec["hmax"], half_life) if spec["hmax"] < 1e15 else half_life
