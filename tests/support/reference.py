"""The offline reference: the engine run in-process over an event file, no Kafka, no worker."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from collections.abc import Iterable
from typing import Any

import orjson
from redis.asyncio import Redis

from leadpulse import events as contract
from leadpulse.handoff import publishes
from leadpulse.keys import Keys
from leadpulse.model import ScoringModel
from leadpulse.dev.simulate import journeys

HOUR = 3_600_000


def fixed_events(n_leads: int, seed: int = 11, start_ms: int | None = None) -> list[dict[str, Any]]:
    """Journeys with every event under its lead's id (anonymous visits included), so that one
    lead's events share one partition and their order is the file's order.

    They happened in the last day and a half, as live traffic does: no lead decays below a stage
    floor during the test (under the default model that takes weeks) and no SQL reaches the
    default model's 2-day sales SLA, so the wall-clock sweep cannot interleave differently with
    the worker's batches than with the reference's (test_state and test_lifecycle cover the
    sweep itself)."""
    now = int(time.time() * 1000)
    start = start_ms if start_ms is not None else now - 36 * HOUR
    out = []
    for e in journeys(n_leads, seed=seed, start_ms=start, prefix=f"s{seed}"):
        if e["occurred_at"] > now - 60_000:
            continue
        if "lead_id" not in e:
            e["lead_id"] = e["anonymous_id"].removeprefix("anon-")
        e.pop("anonymous_id", None)
        out.append(e)
    return out


@dataclass
class Reference:
    scores: dict[str, float]
    stages: dict[str, str]
    handoff_ids: set[str]


async def reference(redis_url: str, model: ScoringModel, events: list[dict[str, Any]], at: int, prefix: str = "ref") -> Reference:
    from leadpulse.state import LeadStore

    client = Redis.from_url(redis_url)
    try:
        store = LeadStore(client, model, Keys(prefix))
        now = int(time.time() * 1000)
        transitions = []
        parsed = [contract.parse(orjson.dumps(e), now, model.clock_skew) for e in events]
        for i in range(0, len(parsed), 500):
            chunk = parsed[i : i + 500]
            result = await store.apply([(e, f"ref:0:{i + j}") for j, e in enumerate(chunk)], now)
            transitions.extend(result.transitions)
        while swept := await store.sweep(at):
            transitions.extend(swept)
            await store.ack(swept)
        leads = {e["lead_id"] for e in events}
        scores, stages = {}, {}
        for lead in leads:
            view = await store.view(lead, at)
            assert view is not None
            scores[lead], stages[lead] = view.explanation.score, view.stage
        ids = {t.handoff_id for t in transitions if publishes(model, t)}
        return Reference(scores, stages, ids)
    finally:
        await client.aclose()


def chunks(items: list[Any], n: int, rng: random.Random | None = None) -> list[list[Any]]:
    size = max(1, len(items) // n)
    return [items[i : i + size] for i in range(0, len(items), size)]


def reference_score(events: Iterable[tuple[float, int, float | None]], at: int) -> float:
    """Σ pointsᵢ·2^{−(t−tᵢ)/h}: the plain definition the forward-decayed store must equal."""
    return sum(p * (1.0 if h is None else 2.0 ** (-(at - t) / h)) for p, t, h in events)
