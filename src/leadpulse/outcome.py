"""CRM outcomes into the records published on `leads.outcomes` (schemas/outcome.schema.json):
one labelled example per outcome, the lead as it stood at that instant (lib.lua `outcome`
computed it; nothing is computed here). `leadpulse report` and `calibrate` learn from them."""

from __future__ import annotations

from typing import Any

from .experiments import arm_of
from .handoff import iso
from .model import ScoringModel
from .transition import OutcomeSnapshot


def _at(ms: int | None) -> str | None:
    return iso(ms) if ms is not None else None


def build(model: ScoringModel, o: OutcomeSnapshot) -> dict[str, Any]:
    why = o.explanation
    promoted = o.promoted_at
    # MQL: the first stage above the entry stage; SQL: the top model stage (its handoff starts
    # the sales SLA). In a two-stage model they are the same stage.
    mql, sql = 1, len(model.stages) - 1
    return {
        "outcome_id": o.outcome_id,
        "lead_id": o.lead_id,
        "outcome": o.outcome,
        "reason": o.reason,
        "occurred_at": iso(o.occurred_at),
        "event_id": o.event_id,
        "score": round(why.score, 6),
        "breakdown": {cat: round(v, 6) for cat, v in why.breakdown.items()},
        "stage": model.stage_names[o.stage_before],
        "stage_after": model.stage_names[o.stage_after],
        "fit_grade": why.fit_grade,
        "fit_score": why.fit_score,
        "model_version": model.version,
        # the A/B arm the lead is in (the same split as its handoffs): the report's per-arm verdict
        "arm": arm_of(model, o.lead_id),
        "first_seen_at": _at(o.first_seen_at),
        "mql_at": _at(promoted[mql] if mql < len(promoted) else None),
        "sql_at": _at(promoted[sql] if sql < len(promoted) else None),
        "last_handoff_id": o.last_handoff_id,
    }


def sla_seconds(model: ScoringModel, o: OutcomeSnapshot) -> float | None:
    """Sales' answer time to an SQL (its handoff → sql_accepted / sql_rejected), in event time;
    None when the outcome does not answer an SQL the lead was in."""
    sql = len(model.stages) - 1
    if o.outcome not in ("sql_accepted", "sql_rejected") or o.stage_before != sql or sql >= len(o.promoted_at):
        return None
    since = o.promoted_at[sql]
    return None if since is None else max(0.0, (o.occurred_at - since) / 1000)
