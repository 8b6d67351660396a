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
    #: what a newer transition carries after its explanation (a lifecycle move's outcome,
    #: reason), as the script reported it
    extra: tuple[Any, ...]


Entry = Scored | Move


def _stage(store: LeadStore, index: int) -> str:
    stages = store.model.stages
    return stages[index].name if 0 <= index < len(stages) else f"#{index}"


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
            out.append(Move(e[1], e[2], _stage(store, e[3]), _stage(store, e[4]), float(e[5]), float(e[6]),
                            e[7] or None, tuple(e[8:])))
    out.reverse()  # the list is newest first
    return out


async def history(store: LeadStore, lead_id: str, at: int) -> list[Entry]:
    """The lead's logged activity read at `at` (epoch ms), oldest first; [] when none is kept."""
    try:
        await store.ready()
        reply = await store.scripts.run(scripts.HISTORY, [store.keys.lead(lead_id).activity], [store.spec, at])
    except RedisError as exc:
        raise StateError(f"redis: {exc}") from exc
    return decode(store, msgpack.unpackb(reply, raw=False, strict_map_key=False))
