"""The packed lead state (key `…:v`, keys.py): its layout and format numbers, owned here.

lua/lib.lua reads and writes the state (`load`, `save`: one msgpack array, one GET and one SET);
nothing in Python computes from it. The format numbers reach the scripts from here (`FORMAT` and
`ERASED` in the model spec, spec.lua_spec; the tombstone as erase.lua's argument), and
tests/test_state.py unpacks a state the scripts wrote and checks every field below by name, so a
layout changed on one side only fails there. Change `FORMAT` with the layout: `load` refuses a
state of another format.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgpack

from .errors import StateError

#: the layout below
FORMAT = 2
#: an erased lead's tombstone: [ERASED] and nothing else (erase.lua writes it, apply.lua refuses
#: the lead's events while it lasts)
ERASED = 0
TOMBSTONE: bytes = msgpack.packb([ERASED])


class PackedState(NamedTuple):
    """A lead's state as stored. Times in ms are offsets from `base` (smaller to store); an
    absent value is None (stored as false)."""

    format: int
    #: B: epoch ms the lead's times are offsets from; moved up to the clock every ~50 days
    base: int | None
    #: c - B: the lead's clock, the latest event time applied (or demotion time swept)
    clock: int | None
    #: L - B: the landmark of the forward-decayed sums (docs/scoring.md §4)
    landmark: int | None
    #: s: index of the lead's stage in the model (0: the first)
    stage: int
    #: q: transitions so far (they number the handoff ids)
    seq: int
    #: u - c: when decay alone takes the lead below its stage's floor; None: never
    due: int | None
    #: epoch s (rounded down) of the oldest arrival in the dedup set: trimmed only once it left
    oldest_arrival: int | None
    #: 1: in the due index, 2: in the top index, 4: an index may be stale
    indexes: int
    #: rule code -> [S, latest occurrence - B]: S = Σ p·e^{λ(tᵢ − L)}
    sums: dict[int, list[float]]
    #: fit rule code -> points (not decayed)
    fit: dict[int, float]
    #: rule code -> what its cap awarded: a lifetime total, or [t₁ - B, a₁, t₂ - B, a₂, …]
    caps: dict[int, Any]
    #: wall-clock epoch s until which the traits key `…:p` lives; None while it has no expiry
    #: (absent from states written before it)
    traits_expiry: int | None = None
    # The lifecycle (docs/scoring.md §10): absent from states written before it, and the empty
    # fields at the end are not written. Times are offsets from `base`, like the clock.
    #: fs - B: the lead's first event (unknown for leads older than this field)
    first_seen_at: int | None = None
    #: pt: per model stage (index + 1), when the lead was last promoted into it - B, or None
    promoted_at: Any = None
    #: lh: the last handoff published: [seq, kind code (lib.lua KINDS, 1-based), crossed_at - B]
    last_handoff: list[Any] | None = None
    #: lc: the lifecycle stage, 1-based in the model's lifecycle.stages; None/0: none (the score decides)
    lifecycle: int | None = None
    #: cd - B: a recycled lead's cool-down end: no promotion before it
    cooldown_until: int | None = None
    #: so - B: the SQL promotion time whose SLA was reported overdue (once per SQL)
    sla_reported: int | None = None
    #: lr - B: the occurred_at of the latest recycle (sql_rejected, lost)
    last_recycle_at: int | None = None
    #: la: per lifecycle stage (1-based), the occurred_at of its latest advance - B, or None
    advanced_at: Any = None
    # After the lifecycle's fields (fields 22-23 in lib.lua's save):
    #: n: how many of the model's fit traits the lead's traits hold (completeness = n / fit traits,
    #: docs/scoring.md §5); None until a profile update since it was added
    fit_known: int | None = None
    #: the idle clock (docs/scoring.md §4, Idle decay), epoch ms: [latest activity A, ticks K(A),
    #: oldest activity kept, then per idle gap its activity and the next]; None without idle decay
    idle: list[float] | None = None


def _by_code(table: Any) -> dict[int, Any]:
    # cmsgpack packs a table keyed 1..n as an array, and an empty one as []
    return dict(enumerate(table, 1)) if isinstance(table, list) else dict(table)


def unpack(raw: bytes | None) -> PackedState | None:
    """A lead's packed state, field by field; None when there is none or it was erased."""
    if raw is None:
        return None
    state = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    if isinstance(state, list) and state[:1] == [ERASED]:
        return None
    if not isinstance(state, list) or not state or state[0] != FORMAT:
        raise StateError(f"lead state of an unknown format: {state[:1] if isinstance(state, list) else type(state)}")
    values: list[Any] = [None if v is False else v for v in state]
    values[9], values[10], values[11] = (_by_code(t) for t in values[9:12])
    return PackedState(*values)
