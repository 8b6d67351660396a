"""A made-up but plausible history of outcome and handoff records, for the report's screenshot
in docs/ (`python -m tests.analysis.report_demo DIR` writes DIR/outcomes.jsonl and DIR/handoffs.jsonl).
Deterministic; the numbers mean nothing beyond showing every part of the page."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import orjson

from leadpulse.handoff import iso

HOUR = 3_600_000
T0 = 1_767_225_600_000  # 2026-01-01
REASONS = ["no budget", "not the decision maker", "bad timing", "already a customer of a competitor", "student"]


def records(seed: int = 5) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rng = random.Random(seed)
    outcomes: list[dict[str, Any]] = []
    handoffs: list[dict[str, Any]] = []
    for n in range(600):
        version = "default-2026.11" if n < 360 else "calibrated-2026.12"
        sharp = 0.035 if version.startswith("default") else 0.06
        lead = f"demo-{n:04d}"
        seen = T0 + n * 5 * HOUR
        quality = rng.gauss(0, 1)
        score = max(0.0, round(80 + 45 * (quality + rng.gauss(0, 0.9)), 1))
        grade = "A" if quality > 0.9 else "B" if quality > 0 else "C" if quality > -0.9 else "D"
        t = seen + rng.randint(2, 200) * HOUR
        mql = sql = None
        if score >= 60:
            mql = t
            handoffs.append(_handoff(lead, "mql", "lead", mql, score, grade, version, n))
        if score >= 110 and grade != "D":
            sql = (mql or t) + rng.randint(1, 72) * HOUR
            handoffs.append(_handoff(lead, "sql", "mql", sql, score, grade, version, n + 100_000))
        state = {"score": score, "fit_grade": grade, "model_version": version, "arm": None,
                 "first_seen_at": iso(seen), "mql_at": iso(mql) if mql else None, "sql_at": iso(sql) if sql else None}
        p_win = 1 / (1 + pow(2.718, -(sharp * (score - 110))))
        if sql is not None:
            if rng.random() < 0.12:
                continue  # sales has not answered yet
            answer = sql + int(rng.expovariate(1 / 30) * HOUR) + HOUR
            if rng.random() < 0.25 + 0.5 * p_win:
                outcomes.append(_outcome(lead, "sql_accepted", answer, state))
                if rng.random() < 0.75:
                    opp = answer + rng.randint(24, 240) * HOUR
                    outcomes.append(_outcome(lead, "opportunity_created", opp, state))
                    won = rng.random() < p_win
                    outcomes.append(_outcome(lead, "won" if won else "lost", opp + rng.randint(72, 900) * HOUR, state))
            else:
                outcomes.append(_outcome(lead, "sql_rejected", answer, state, rng.choice(REASONS)))
        elif rng.random() < 0.5:
            won = rng.random() < p_win * 0.5
            outcomes.append(_outcome(lead, "won" if won else "lost", t + rng.randint(100, 2000) * HOUR, state))
    return outcomes, handoffs


def _outcome(lead: str, kind: str, at: int, state: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
    return {"outcome_id": f"{lead}:{kind}", "lead_id": lead, "outcome": kind, "occurred_at": iso(at), "reason": reason, **state}


def _handoff(lead: str, stage: str, previous: str, at: int, score: float, grade: str, version: str, n: int) -> dict[str, Any]:
    return {"handoff_id": f"h-{n}", "kind": "promoted", "lead_id": lead, "stage": stage, "previous_stage": previous,
            "score": score, "threshold": 60.0 if stage == "mql" else 110.0, "fit_grade": grade, "breakdown": {},
            "top_signals": [], "triggered_by_event_id": None, "model_version": version, "crossed_at": iso(at)}


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    outcomes, handoffs = records()
    (out / "outcomes.jsonl").write_bytes(b"\n".join(orjson.dumps(o) for o in outcomes) + b"\n")
    (out / "handoffs.jsonl").write_bytes(b"\n".join(orjson.dumps(h) for h in handoffs) + b"\n")


if __name__ == "__main__":
    main()
