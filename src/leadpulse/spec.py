"""The scoring model as the Lua scripts read it: one msgpack "spec" passed to every script that
scores (ARGV[1]), with rules named by their codes (rules.lua) and the packed state's format
numbers (layout.py). Python builds it; lib.lua computes with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import msgpack

from . import layout
from .model import ScoringModel
from .semantics import extend_spec


def lua_spec(model: ScoringModel, codes: Mapping[str, int], lead_ttl_ms: int = 0, activity_max: int = 0) -> bytes:
    """The model as the scripts need it (msgpack, rules by code, rules.lua): decay rate and
    category per rule, categories, caps, stages, grades; how long an idle lead in the first
    stage is kept (0: forever); the activity log's cap (0: none kept, activity.lua); and the format
    numbers of the packed state (layout.py)."""
    cats = list(model.categories)
    size = max(codes.values(), default=0)
    # lists indexed by code - 1 (a Lua array; None for codes this model has no rule for)
    lam: list[float | None] = [None] * size
    cat: list[int | None] = [None] * size
    for rule in model.rules:
        hl = model.half_life_ms(rule)
        lam[codes[rule.id] - 1] = 0.0 if hl is None else math.log(2) / hl
    for fit_rule in model.fit.rules:
        lam[codes[fit_rule.id] - 1] = 0.0
    for r in (*model.rules, *model.fit.rules):
        cat[codes[r.id] - 1] = cats.index(r.category) + 1
    rates = [v for v in lam if v is not None]
    half_lives = [math.log(2) / v for v in rates if v > 0]
    spec = {
        "lam": lam,
        "lmax": max(rates, default=0.0),
        "hmin": min(half_lives, default=1e15),
        "hmax": max(half_lives, default=1e15),
        "cat": cat,
        "cats": [[c.weight, -1 if c.cap is None else c.cap] for c in model.categories.values()],
        "caps": {
            codes[r.id]: [cap.points, cap.window or 0]
            for r in model.rules
            if (cap := r.effective_cap) is not None
        },
        "grades": [model.fit.grades["A"], model.fit.grades["B"], model.fit.grades["C"]],
        "hyst": model.hysteresis,
        "dedup": model.dedup_window,
        "ttl": lead_ttl_ms,
        "activity": activity_max,
        "format": layout.FORMAT,
        "erased": layout.ERASED,
        "lc": {**model.lifecycle.spec(), "ho": [s.handoff for s in model.stages]},
    }
    extend_spec(spec, model, codes)  # stages with their conditions, intent, completeness, idle decay
    return bytes(msgpack.packb(spec))
