"""What the board's activity log costs (lua/activity.lua): Redis CPU per event and bytes per lead.

`python -m leadpulse.bench.activity [--leads N]`: the same synthetic journeys (dev/simulate.py)
are applied through LeadStore, 500 events a batch, into a fresh redis-server twice, with the log
off (LEADPULSE_ACTIVITY_MAX=0) and on (the default cap), alternately, `--rounds` times each, and
Redis's own accounting is read: the CPU time redis-server used (INFO cpu: user + sys, which a
busy machine does not inflate, unlike the wall-clock usec of INFO commandstats), used_memory,
and MEMORY USAGE of the logs. Prints JSON, with the median of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from ..bounds import Retention
from ..dev.embedded import RedisServer
from ..dev.simulate import journeys
from ..events import from_dict
from ..model import load_model
from ..state import LeadStore

BATCH = 500


async def _run(url: str, events: list[dict[str, Any]], cap: int) -> dict[str, Any]:
    redis = Redis.from_url(url)
    await redis.flushall()
    await redis.config_resetstat()
    model = load_model()
    store = LeadStore(redis, model, retention=Retention(activity_max=cap))
    before = int((await redis.info("memory"))["used_memory"])
    cpu0 = await _cpu(redis)
    parsed = [from_dict(e, e["occurred_at"], 0) for e in events]
    for i in range(0, len(parsed), BATCH):
        chunk = parsed[i : i + BATCH]
        await store.apply([(e, f"bench:0:{i + j}") for j, e in enumerate(chunk)], now=events[-1]["occurred_at"])
    cpu = await _cpu(redis) - cpu0
    stats = await redis.info("commandstats")
    evalsha = stats.get("cmdstat_evalsha", {})
    used = int((await redis.info("memory"))["used_memory"]) - before
    leads = sorted({e["lead_id"] for e in events if e.get("lead_id")})
    sample = random.Random(3).sample(leads, min(2000, len(leads)))
    pipe = redis.pipeline(transaction=False)
    for lead in sample:
        pipe.memory_usage(store.keys.lead(lead).activity, samples=0)
        pipe.llen(store.keys.lead(lead).activity)
    got = await pipe.execute()
    logs = [(b or 0, n) for b, n in zip(got[0::2], got[1::2])]
    await redis.aclose()
    entries = sum(n for _, n in logs)
    return {
        "activity_max": cap, "events": len(events), "leads": len(leads),
        "evalsha_usec_total": evalsha.get("usec", 0), "evalsha_calls": evalsha.get("calls", 0),
        "redis_cpu_usec_per_event": round(cpu * 1e6 / len(events), 2),
        "evalsha_wall_usec_per_event": round(evalsha.get("usec", 0) / len(events), 2),
        "used_memory_bytes_per_lead": round(used / len(leads), 1),
        "memory_usage_log_bytes_mean": round(sum(b for b, _ in logs) / len(logs), 1),
        "log_entries_mean": round(entries / len(logs), 2),
        "memory_usage_bytes_per_entry": round(sum(b for b, _ in logs) / max(1, entries), 1),
        "full_logs_bytes_mean": round(sum(b for b, n in logs if n == cap) / max(1, sum(1 for _, n in logs if n == cap)), 1)
        if cap else 0,
    }


async def _cpu(redis: Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def measure(leads: int, seed: int, rounds: int) -> dict[str, Any]:
    events = [e for e in journeys(leads, seed=seed) if e.get("lead_id")]  # identified leads only
    runs: dict[int, list[dict[str, Any]]] = {0: [], Retention().activity_max: []}
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp), appendonly=False)
        server.start()
        try:
            for _ in range(rounds):
                for cap in runs:
                    runs[cap].append(await _run(server.url, events, cap))
        finally:
            server.stop()
    off, on = (sorted(r, key=lambda x: x["redis_cpu_usec_per_event"])[len(r) // 2] for r in runs.values())
    return {"off": off, "on": on, "cpu_usec_per_event_rounds": {cap: [x["redis_cpu_usec_per_event"] for x in r]
                                                                for cap, r in runs.items()},
            "extra_redis_cpu_usec_per_event": round(on["redis_cpu_usec_per_event"] - off["redis_cpu_usec_per_event"], 2),
            "extra_used_memory_bytes_per_lead": round(on["used_memory_bytes_per_lead"] - off["used_memory_bytes_per_lead"], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.leads, args.seed, args.rounds)), indent=2))


if __name__ == "__main__":
    main()
