"""Transitions into the records sales receives on `leads.handoff` (schemas/handoff.schema.json)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .engine import Explainer
from .model import ScoringModel
from .state import Transition

TOP_SIGNALS = 5


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def publishes(model: ScoringModel, t: Transition) -> bool:
    """Sales hears of a lead entering a handoff stage, and of one leaving it."""
    stage = model.stages[t.to_stage if t.kind == "promoted" else t.from_stage]
    return stage.handoff


def build(model: ScoringModel, explainer: Explainer, t: Transition) -> dict[str, Any]:
    view = explainer.view(t.lead_id, t.snapshot, t.crossed_at)
    rules = model.rule_index
    signals = [c for c in view.contributions if c.points > 0][:TOP_SIGNALS]
    return {
        "handoff_id": t.handoff_id,
        "kind": t.kind,
        "lead_id": t.lead_id,
        "stage": model.stages[t.to_stage].name,
        "previous_stage": model.stages[t.from_stage].name,
        "score": round(t.score, 6),
        "threshold": t.threshold,
        "fit_grade": view.fit_grade,
        "fit_score": view.fit_score,
        "breakdown": {cat: round(v, 6) for cat, v in view.breakdown.items()},
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
        "crossed_at": iso(t.crossed_at),
    }
