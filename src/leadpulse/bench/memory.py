"""Stage `memory`: Redis bytes per lead at `--memory-leads` leads, from the LeadPulse stage's
data: the measured leads are copied under new ids until there are that many, and Redis's
`used_memory` growth is measured for each kind of key apart (state, indexes, dedup window,
replay logs and traits), beside sampled `MEMORY USAGE` of the measured leads' keys."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

from .context import DB_LEADPULSE, DB_MEMORY, Context
from .report import Report


async def redis_memory(port: int, source_db: int, target_db: int, target_leads: int,
                       on_progress: Callable[[int], None]) -> dict[str, Any]:
    """Bytes per lead: sampled MEMORY USAGE of the measured leads, and used_memory growth when the
    measured leads are copied (under new ids) up to `target_leads`: state, indexes, dedup apart,
    and apart too the replay logs and traits (only some leads have them)."""
    from redis.asyncio import Redis

    from ..keys import Keys

    keys = Keys()
    src = Redis(host="127.0.0.1", port=port, db=source_db)
    dst = Redis(host="127.0.0.1", port=port, db=target_db)
    try:
        leads: list[str] = []
        async for key in src.scan_iter(match=f"{keys.prefix}:l{{*}}:v", count=5000):
            k = key.decode()
            leads.append(k[len(keys.prefix) + 3 : -3])
        if not leads:
            return {}
        pipe = src.pipeline(transaction=False)
        for lead in leads:
            pipe.exists(keys.lead(lead).replay)
            pipe.exists(keys.lead(lead).traits)
        got = await pipe.execute()
        with_replay = {lead for lead, n in zip(leads, got[0::2]) if n}
        with_traits = {lead for lead, n in zip(leads, got[1::2]) if n}
        rng = random.Random(5)
        sample = rng.sample(leads, min(2000, len(leads)))
        pipe = src.pipeline(transaction=False)
        for lead in sample:
            k = keys.lead(lead)
            pipe.memory_usage(k.state, samples=0)
            pipe.memory_usage(k.dedup, samples=0)
            pipe.strlen(k.state)
            pipe.zcard(k.dedup)
            pipe.object("encoding", k.state)
            pipe.memory_usage(k.replay, samples=0)
            pipe.memory_usage(k.traits, samples=0)
        got = await pipe.execute()
        state_b = [x or 0 for x in got[0::7]]
        dedup_b = [x or 0 for x in got[1::7]]
        value_b = got[2::7]
        dedup_n = got[3::7]
        encodings: dict[str, int] = {}
        for e in got[4::7]:
            name = e.decode() if isinstance(e, bytes) else str(e)
            encodings[name] = encodings.get(name, 0) + 1
        replay_b = [x for x in got[5::7] if x]
        traits_b = [x for x in got[6::7] if x]
        due = {m.decode(): s for m, s in await src.zrange(keys.due, 0, -1, withscores=True)}
        top = {m.decode(): s for m, s in await src.zrange(keys.top, 0, -1, withscores=True)}

        await dst.flushdb()
        copies = max(1, math.ceil(target_leads / len(leads)))
        n_target = copies * len(leads)

        async def used() -> int:
            return int((await dst.info("memory"))["used_memory"])

        async def copy(kind: str) -> int:
            # COPY … DB n runs on the source database's connection; the index ZADDs on the target's.
            client = dst if kind == "index" else src
            before = await used()
            batch = client.pipeline(transaction=False)
            queued = 0
            for c in range(copies):
                for lead in leads:
                    new = f"{lead}~{c}"
                    old_keys, new_keys = keys.lead(lead), keys.lead(new)
                    if kind == "state":
                        batch.execute_command("COPY", old_keys.state, new_keys.state, "DB", target_db)
                    elif kind == "dedup":
                        batch.execute_command("COPY", old_keys.dedup, new_keys.dedup, "DB", target_db)
                    elif kind == "replay":
                        if lead in with_replay:
                            batch.execute_command("COPY", old_keys.replay, new_keys.replay, "DB", target_db)
                    elif kind == "traits":
                        if lead in with_traits:
                            batch.execute_command("COPY", old_keys.traits, new_keys.traits, "DB", target_db)
                    else:
                        if lead in due:
                            batch.zadd(keys.due, {new: due[lead]})
                        if lead in top:
                            batch.zadd(keys.top, {new: top[lead]})
                    queued += 1
                    if queued >= 10_000:
                        await batch.execute()
                        on_progress(queued)
                        batch = client.pipeline(transaction=False)
                        queued = 0
            if queued:
                await batch.execute()
                on_progress(queued)
            return await used() - before

        state = await copy("state")
        index = await copy("index")
        dedup = await copy("dedup")
        replay = await copy("replay")
        traits = await copy("traits")
        await dst.flushdb()
        mean = lambda xs: sum(xs) / len(xs) if xs else 0.0
        return {
            "measured_leads": len(leads),
            "sampled": len(sample),
            "memory_usage_state_bytes": round(mean(state_b), 1),
            "memory_usage_dedup_bytes": round(mean(dedup_b), 1),
            "state_value_bytes_mean": round(mean(value_b), 1),
            "dedup_events_mean": round(mean(dedup_n), 1),
            "state_encodings": encodings,
            "at_leads": n_target,
            "state_bytes_per_lead": round(state / n_target, 1),
            "index_bytes_per_lead": round(index / n_target, 1),
            "dedup_bytes_per_lead": round(dedup / n_target, 1),
            "dedup_bytes_per_event": round(dedup / n_target / max(1e-9, mean(dedup_n)), 1),
            "staged_share": round(len(top) / len(leads), 3),
            # kept apart from the state, for the leads that have them
            "replay_share": round(len(with_replay) / len(leads), 3),
            "replay_bytes_per_lead": round(replay / n_target, 1),
            "memory_usage_replay_bytes": round(mean(replay_b), 1),
            "traits_share": round(len(with_traits) / len(leads), 3),
            "traits_bytes_per_lead": round(traits / n_target, 1),
            "memory_usage_traits_bytes": round(mean(traits_b), 1),
        }
    finally:
        await src.aclose()
        await dst.aclose()


async def stage(ctx: Context, report: Report) -> None:
    report.redis_memory = await redis_memory(ctx.port, DB_LEADPULSE, DB_MEMORY, ctx.memory_leads,
                                             ctx.task(f"Redis memory at {ctx.memory_leads:,} leads", None))
    ctx.finish()
