"""Leads' histories through the real engine: LeadStore.apply on a private key prefix of a real
redis-server, then each lead read just before its outcome. The holdout figures of calibration
come from here and only here, for the current model and the candidate alike (one truth: the
score sales would have seen, not a regression's prediction)."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

from ..dev.embedded import RedisServer
from ..keys import Keys
from ..model import ScoringModel
from ..state import LeadStore
from .features import History

BATCH = 2000


@dataclass(frozen=True, slots=True)
class Scored:
    score: float  # at the outcome, from the events before it
    fit_score: float
    reached: int  # the highest stage the lead was promoted into before its outcome (0: none)


@contextlib.asynccontextmanager
async def engine_redis(url: str | None) -> AsyncIterator[Redis]:
    """A client for `url`, or for a redis-server started here (no persistence) and stopped after."""
    if url is not None:
        client = Redis.from_url(url)
        try:
            yield client
        finally:
            await client.aclose()
        return
    with tempfile.TemporaryDirectory(prefix="leadpulse-calibrate-") as tmp:
        server = RedisServer(Path(tmp), appendonly=False)
        await asyncio.to_thread(server.start)
        client = Redis.from_url(server.url)
        try:
            yield client
        finally:
            await client.aclose()
            server.stop()


async def score(redis: Redis, model: ScoringModel, leads: Sequence[History]) -> dict[str, Scored]:
    """Apply every lead's events (all leads together, in time order, in batches as the worker
    would) under a fresh key prefix, read each lead at its outcome time, then delete the keys."""
    keys = Keys(prefix=f"lpcal-{uuid.uuid4().hex[:12]}")
    store = LeadStore(redis, model, keys)
    timeline = sorted(((e.occurred_at, n, e) for n, h in enumerate(leads) for e in h.events), key=lambda x: (x[0], x[1]))
    reached: dict[str, int] = {}
    try:
        for start in range(0, len(timeline), BATCH):
            chunk = timeline[start : start + BATCH]
            batch = [(e, f"replay:{start + i}") for i, (_, _, e) in enumerate(chunk)]
            result = await store.apply(batch, now=chunk[-1][0])
            for t in result.transitions:
                if t.kind == "promoted":
                    reached[t.lead_id] = max(reached.get(t.lead_id, 0), t.to_stage)
        out: dict[str, Scored] = {}
        for start in range(0, len(leads), 1000):
            part = leads[start : start + 1000]
            for h, view in zip(part, await store.read([(h.lead_id, h.at) for h in part])):  # as LeadStore.view reads
                if view is None:  # no event before its outcome: nothing scored
                    out[h.lead_id] = Scored(0.0, 0.0, 0)
                    continue
                why = view.explanation
                out[h.lead_id] = Scored(why.score, why.fit_score, reached.get(h.lead_id, 0))
        return out
    finally:
        await _forget(redis, keys.prefix)


async def _forget(redis: Redis, prefix: str) -> None:
    doomed: list[bytes] = []
    async for key in redis.scan_iter(match=f"{prefix}:*", count=1000):
        doomed.append(key)
        if len(doomed) >= 1000:
            await redis.unlink(*doomed)
            doomed.clear()
    if doomed:
        await redis.unlink(*doomed)
