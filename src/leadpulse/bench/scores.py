"""Final scores of a run's leads, read as LeadStore.view reads them, so that runs (the baseline,
one worker, two workers) can be compared lead by lead."""

from __future__ import annotations

import math
from collections.abc import Sequence


async def final_scores(redis_url: str, leads: Sequence[str], at: int) -> dict[str, float]:
    from redis.asyncio import Redis

    from ..model import load_model
    from ..state import LeadStore

    client = Redis.from_url(redis_url)
    try:
        store = LeadStore(client, load_model())
        out: dict[str, float] = {}
        for i in range(0, len(leads), 1000):
            chunk = leads[i : i + 1000]
            # as LeadStore.view reads a lead, one pipelined round trip per thousand
            for lead, view in zip(chunk, await store.read([(lead, at) for lead in chunk])):
                out[lead] = view.explanation.score if view is not None else math.nan
        return out
    finally:
        await client.aclose()


def differing(a: dict[str, float], b: dict[str, float]) -> list[str]:
    return [
        lead for lead in a
        if not (math.isclose(a[lead], b.get(lead, math.nan), rel_tol=1e-9, abs_tol=1e-9))
    ]
