"""A lead's activity log as the board's lead page shows it: its scored events with the points
each rule earned and what is left of them now, and its moves (lua/activity.lua writes the log in
the same call that changes the lead; lua/history.lua reads it at an instant). Nothing is computed
here: codes get their names back, as in explanation.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
from redis.exceptions import RedisError

from . import scripts
from .errors import StateError
from .state import LeadStore


@dataclass(frozen=True, slots=True)
class Earned:
    rule_id: str
    #: what the rule awarded (after its cap; before decay and its category's weight)
    points: float
    #: what is left of them at the instant read (decayed at the rule's rate)
    left: float


@dataclass(frozen=True, slots=True)
class Scored:
    #: when the event happened
    at: int
    event_id: str
    #: the lead's score at its clock (its latest event time, `clock`) just after the event
    score: float
    earned: tuple[Earned, ...]
    clock: int


@dataclass(frozen=True, slots=True)
class Move:
    at: int
    kind: str
    from_stage: str
    to_stage: str
    #: the score the move was decided on, and the threshold it crossed
    score: float
    threshold: float
    event_id: str | None
    #: a CRM-driven move's outcome (e.g. sql_rejected), the CRM's reason, its cool-down's end
    #: (epoch ms): what a lifecycle transition carries after its explanation (CONTRACTS: outcome,
    #: reason, cooldown_until); None for a score-driven move
    outcome: str | None = None
    reason: str | None = None
    cooldown_until: int | None = None


Entry = Scored | Move


def _stage(store: LeadStore, index: int) -> str:
    # the index the scripts report: the model's stages, then the lifecycle's (ScoringModel.stage_names)
    names = store.model.stage_names
    return names[index] if 0 <= index < len(names) else f"#{index}"


def decode(store: LeadStore, rows: list[Any]) -> list[Entry]:
    """history.lua's reply (unpacked), oldest first, in the order the lead was changed: each
    event, then the moves it caused. Events from different sources may arrive out of their time
    order; the scores follow the arrival (each is the score after that event, at the clock)."""
    out: list[Entry] = []
    names = store.rule_names
    for e, left in rows:
        if e[0] == 1:
            codes = e[4]
            earned = tuple(Earned(names.get(code) or f"#{code}", float(p), float(lf))
                           for code, p, lf in zip(codes[::2], codes[1::2], left))
            out.append(Scored(e[1], e[2], float(e[3]), earned, e[5] if len(e) > 5 else e[1]))
        else:
            outcome, reason, cooldown = (*e[8:11], False, False, False)[:3]
            out.append(Move(e[1], e[2], _stage(store, e[3]), _stage(store, e[4]), float(e[5]), float(e[6]),
                            e[7] or None, outcome or None, reason or None, cooldown or None))
    out.reverse()  # the list is newest first
    return out


async def history(store: LeadStore, lead_id: str, at: int) -> list[Entry]:
    """The lead's logged activity read at `at` (epoch ms), oldest first; [] when none is kept."""
    try:
        await store.ready()
        lead = store.keys.lead(lead_id)
        reply = await store.scripts.run(scripts.HISTORY, [lead.activity, lead.state], [store.spec_of(lead_id), at])
    except RedisError as exc:
        raise StateError(f"redis: {exc}") from exc
    return decode(store, msgpack.unpackb(reply, raw=False, strict_map_key=False))
