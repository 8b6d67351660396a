"""Outcome and handoff records as `leadpulse report` reads them, made by hand at hours after T0
(the report's and the experiments' tests share them)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

T0 = "2026-03-02T09:00:00"


def at(hours: float) -> str:
    base = datetime.fromisoformat(T0).replace(tzinfo=UTC)
    return (base + timedelta(hours=hours)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def outcome(oid: str, lead: str, kind: str, hours: float, **fields: Any) -> dict[str, Any]:
    record = {"outcome_id": oid, "lead_id": lead, "outcome": kind, "occurred_at": at(hours)}
    record.update({"model_version": "m1", "arm": None, "mql_at": None, "sql_at": None, "first_seen_at": at(0), **fields})
    for key in ("mql_at", "sql_at", "first_seen_at"):
        if isinstance(record[key], (int, float)):
            record[key] = at(record[key])
    return record


def handoff(hid: str, lead: str, stage: str, hours: float, previous: str = "lead", version: str = "m1") -> dict[str, Any]:
    return {
        "handoff_id": hid, "kind": "promoted", "lead_id": lead, "stage": stage, "previous_stage": previous,
        "score": 100.0, "threshold": 60.0, "fit_grade": "B", "breakdown": {}, "top_signals": [],
        "triggered_by_event_id": None, "model_version": version, "crossed_at": at(hours),
    }


def write(path: Path, rows: list[dict[str, Any]], extra: list[bytes] = ()) -> Path:  # type: ignore[assignment]
    path.write_bytes(b"\n".join([orjson.dumps(r) for r in rows] + list(extra)) + b"\n")
    return path
