"""Transitions into the records sales receives on `leads.handoff` (schemas/handoff.schema.json)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .experiments import arm_of
from .model import ScoringModel
from .state import Transition
from .who import Who

TOP_SIGNALS = 5
_DEFAULT_WHO = Who()


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def publishes(model: ScoringModel, t: Transition) -> bool:
    """Sales hears of a lead entering a handoff stage, and of one leaving it; every CRM move and
    SLA breach is published (docs/scoring.md §10)."""
    if t.kind not in ("promoted", "demoted"):
        return True
    stage = model.stages[t.to_stage if t.kind == "promoted" else t.from_stage]
    return stage.handoff


def build(model: ScoringModel, t: Transition, who: Who | None = None) -> dict[str, Any]:
    """The record of a transition: its numbers are those the script that decided it computed
    (t.explanation, lib.lua `explain`), rounded for the reader; who the lead is from the traits
    the same script handed back (t.traits), as `who` configures (default: who.DEFAULT_WHO)."""
    why = t.explanation
    rules = model.rule_index
    signals = [c for c in why.contributions if c.points > 0][:TOP_SIGNALS]
    return {
        "handoff_id": t.handoff_id,
        "kind": t.kind,
        "lead_id": t.lead_id,
        "stage": model.stage_names[t.to_stage],
        "previous_stage": model.stage_names[t.from_stage],
        "score": round(why.score, 6),
        "threshold": t.threshold,
        "fit_grade": why.fit_grade,
        "fit_score": why.fit_score,
        "completeness": round(why.completeness, 6),
        "breakdown": {cat: round(v, 6) for cat, v in why.breakdown.items()},
        "top_signals": [
            {
                "rule_id": c.rule_id,
                "description": rules[c.rule_id].description if c.rule_id in rules else "",
                "category": c.category,
                "points": round(c.points, 6),
                "last_occurred_at": iso(c.last_occurred_at) if c.last_occurred_at is not None else None,
            }
            for c in signals
        ],
        "triggered_by_event_id": t.event_id,
        "model_version": model.version,
        "arm": arm_of(model, t.lead_id),
        "crossed_at": iso(t.crossed_at),
        "outcome": t.outcome,
        "reason": t.reason,
        "cooldown_until": iso(t.cooldown_until) if t.cooldown_until is not None else None,
        **(who or _DEFAULT_WHO).of(t.lead_id, t.traits),
    }
