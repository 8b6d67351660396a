"""A lead's transitions and CRM outcomes as the scripts report them (lua/lib.lua), with the
deterministic ids they are published under (leads.handoff, leads.outcomes)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .explanation import Explanation, explained

_HANDOFF_NS = uuid.UUID("6b0c5d0e-2f7a-4a51-9a52-3c1f1e0a7d11")
_OUTCOME_NS = uuid.UUID("0d3f6a52-7c1e-4f4b-9d8e-5b2a1c9e7f30")


def handoff_id(lead_id: str, seq: int, kind: str, crossed_at: int) -> str:
    # Deterministic: a replay, a re-sweep or a rescore from retention yields the same id.
    return str(uuid.uuid5(_HANDOFF_NS, f"{lead_id}\x00{seq}\x00{kind}\x00{crossed_at}"))


def outcome_id(lead_id: str, event_id: str) -> str:
    # Deterministic from the lead and the CRM event: a redelivered outcome has the same id.
    return str(uuid.uuid5(_OUTCOME_NS, f"{lead_id}\x00{event_id}"))


@dataclass(frozen=True, slots=True)
class Transition:
    lead_id: str
    seq: int
    kind: str  # promoted | demoted | advanced | closed | recycled | sla_overdue
    from_stage: int
    to_stage: int
    crossed_at: int
    event_id: str | None
    threshold: float
    #: the lead at crossed_at, as the script that decided computed it (lib.lua `explain`)
    explanation: Explanation
    #: a CRM move (advanced, closed, recycled): the outcome, its reason, the cool-down's end (ms)
    outcome: str | None = None
    reason: str | None = None
    cooldown_until: int | None = None
    #: the lead's kept traits when the transition was decided (handed back by the same script)
    traits: Mapping[str, Any] | None = None

    #: computed once (uuid5 is a SHA-1): the pipeline reads it several times per transition
    _handoff_id: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def score(self) -> float:
        """The score the stage was decided on."""
        return self.explanation.score

    @property
    def handoff_id(self) -> str:
        if self._handoff_id is None:
            value = handoff_id(self.lead_id, self.seq, self.kind, self.crossed_at)
            object.__setattr__(self, "_handoff_id", value)
            return value
        return self._handoff_id

    @classmethod
    def from_reply(cls, lead_id: str, raw: Sequence[Any], rules: Mapping[int, str],
                   categories: Sequence[str], traits: Mapping[str, Any] | None = None) -> Transition:
        """A transition as the scripts report it (unpacked); `rules` and `categories` name the
        codes of its explanation (explanation.explained)."""
        seq, kind, frm, to, at, event_id, threshold, explanation = raw[:8]
        outcome, reason, cooldown = (*raw[8:11], False, False, False)[:3]
        return cls(
            lead_id=lead_id,
            seq=seq,
            kind=kind,
            from_stage=frm,
            to_stage=to,
            crossed_at=at,
            event_id=event_id or None,
            threshold=float(threshold),
            explanation=explained(explanation, rules, categories),
            outcome=outcome or None,
            reason=reason or None,
            cooldown_until=cooldown or None,
            traits=traits,
        )


@dataclass(frozen=True, slots=True)
class OutcomeSnapshot:
    """A CRM outcome applied to a lead, and the lead as it stood just before (lib.lua `outcome`)."""

    lead_id: str
    event_id: str | None
    outcome: str
    reason: str | None
    occurred_at: int
    #: stage indexes (ScoringModel.stage_names): before the outcome, after it
    stage_before: int
    stage_after: int
    explanation: Explanation
    #: epoch ms the lead was last promoted into each model stage (None: never), by stage index
    promoted_at: tuple[int | None, ...]
    first_seen_at: int | None
    #: the last handoff published for the lead before the outcome: (seq, kind, crossed_at)
    last_handoff: tuple[int, str, int] | None
    cooldown_until: int | None

    @property
    def outcome_id(self) -> str:
        return outcome_id(self.lead_id, self.event_id or f"@{self.occurred_at}:{self.outcome}")

    @property
    def last_handoff_id(self) -> str | None:
        if self.last_handoff is None:
            return None
        seq, kind, at = self.last_handoff
        return handoff_id(self.lead_id, seq, kind, at)

    @classmethod
    def from_reply(cls, lead_id: str, raw: Sequence[Any], rules: Mapping[int, str],
                   categories: Sequence[str]) -> OutcomeSnapshot:
        event_id, outcome, reason, at, before, after, why, promoted, first, last, cooldown = raw
        return cls(lead_id, event_id or None, outcome, reason or None, at, before, after,
                   explained(why, rules, categories), tuple(t or None for t in promoted),
                   first or None, tuple(last) if last else None, cooldown or None)  # type: ignore[arg-type]
