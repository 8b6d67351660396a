"""Stage `rss` (`leadpulse bench --rss-events N`): the worker's RSS over a long stream (issue #4: "worker RSS
flat (± 10 %) across 10 M events").

The bench's other stages hold their event set in memory; 10 M events as dicts would take several
GB. This stage generates events lazily instead, in chunks of `CHUNK_LEADS` journeys
(`leadpulse.dev.simulate`, the same mix as everywhere, anonymous page views under their visitor ids as
simulate makes them), and produces them while the real worker consumes, never more than a tenth
of the run (at most `AHEAD`) ahead of it. New leads keep arriving (each chunk is the journeys of
new leads, started 2 s apart on the event clock as simulate does), so the lead population grows
as in production (~20 events a lead); past `max_leads` distinct leads the ids are recycled
(returning leads, new event ids) and the report says so.

The worker runs on its own topics and its own Redis database, flushed before and after; the
topics are deleted afterwards. Tansu 0.6.0's memory storage keeps every record until its topic
goes (it closes the connection on DeleteRecords), so the broker's RSS grows with the events
produced: ~340 MiB a million events here, measured at every 10 % too.
At every 10 % of the events it samples the worker's RSS and how full its bounded caches are
(`leadpulse_cache_entries`), Redis `used_memory` and the broker's RSS. The RSS rises while
those caches fill; the report gives the spread over the whole run and, apart, from the first
sample at which every cache is full (`warm`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import orjson

from ..events import SOURCES
from .children import Child, Worker
from .context import DB_RSS, Context
from .eventset import create_topics, started_producer
from .measure import CpuTrace, memory
from .report import Report, measured

#: journeys per generated chunk (~20 events each: ~20 k events, well under a second to generate)
CHUNK_LEADS = 1000
#: most events produced and not yet processed: a tenth of the run, at most AHEAD (so a small run
#: is seen at every 10 % too; the bench itself holds one chunk whatever N is)
AHEAD = 1_000_000
#: simulate.journeys starts its leads' journeys up to 2 s × leads apart: new leads arrive at that pace
ARRIVAL_MS = 2000
#: events per journey assumed when placing the run on the event clock (measured ~20: a low guess
#: puts the start earlier, so no event is ever in the future)
EVENTS_PER_LEAD_LOW = 12
#: no progress for this long with events waiting: the stage fails
STALL_S = 180.0
MIB = 2**20


def chunks(total: int, seed: int, max_leads: int, start_ms: int) -> Iterator[tuple[list[dict[str, Any]], int]]:
    """Events in chunks, `total` in all: (events, new distinct leads in the chunk).

    Chunk c is the time-ordered journeys of CHUNK_LEADS leads `r<slot>-<i>`, starting at
    `start_ms + c × CHUNK_LEADS × ARRIVAL_MS`. Slots are recycled after `max_leads` leads: the
    lead then comes back with a new journey (event ids suffixed with the round, so none repeats).
    """
    from ..dev.simulate import journeys

    slots = max(1, max_leads // CHUNK_LEADS)
    sent = 0
    c = 0
    while sent < total:
        slot, round_ = c % slots, c // slots
        events: list[dict[str, Any]] = []
        for e in journeys(CHUNK_LEADS, seed=seed * 1_000_003 + c, start_ms=start_ms + c * CHUNK_LEADS * ARRIVAL_MS,
                          prefix=f"r{slot}"):
            if round_:
                e["event_id"] = f"{e['event_id']}.{round_}"
            events.append(e)
            if sent + len(events) >= total:
                break
        new = len({e["lead_id"] for e in events if "lead_id" in e}) if round_ == 0 else 0
        sent += len(events)
        c += 1
        yield events, new


async def _used_memory(client: Any) -> int:
    return int((await client.info("memory"))["used_memory"])


async def _counts(worker: Worker) -> tuple[int, dict[str, list[int]]]:
    """Handoffs the worker has published, and its bounded caches' [entries, capacity] by name
    (leadpulse_cache_entries / _capacity): (-1, {}) if /metrics did not answer."""
    samples = await worker.metrics()
    if samples is None:
        return -1, {}
    caches: dict[str, list[int]] = {}
    for s in samples:
        if s.name in ("leadpulse_cache_entries", "leadpulse_cache_capacity"):
            caches.setdefault(s.labels["cache"], [0, 0])[s.name == "leadpulse_cache_capacity"] = int(s.value)
    return int(sum(s.value for s in samples if s.name == "leadpulse_handoffs_total")), caches


def warm(series: list[dict[str, Any]]) -> dict[str, Any]:
    """The RSS once the worker is warm: from the first sample at which every bounded cache is full.

    The worker's caches (published handoff ids, visitor links) are bounded, and its RSS rises
    while they fill (their entries, and glibc's heap settling around them: docs/performance.md)
    and is flat after. A run whose caches never fill has no warm part (None).
    """
    at = next((i for i, s in enumerate(series)
               if s.get("caches") and all(n >= cap for n, cap in s["caches"].values())), None)
    if at is None:
        return {"worker_rss_warm_from_pct": None, "worker_rss_warm_min_mib": None,
                "worker_rss_warm_max_mib": None, "worker_rss_warm_spread": None}
    rss = [s["worker_rss_mib"] for s in series[at:]]
    low, high = min(rss), max(rss)
    return {"worker_rss_warm_from_pct": series[at]["pct"], "worker_rss_warm_min_mib": low,
            "worker_rss_warm_max_mib": high, "worker_rss_warm_spread": round((high - low) / low, 4) if low else None}


async def rss_soak(*, bootstrap: str, redis_url: str, pids: tuple[int, int], workdir: Path, events: int, max_leads: int,
                   seed: int, partitions: int, tag: str, extra: dict[str, Any], children: list[Child],
                   task: Callable[[str, float | None], Callable[[int], None]]) -> dict[str, Any]:
    """Stream `events` events through a real worker; the worker's RSS (and Redis's, the broker's
    memory) at every 10 % of them. `pids` are (redis-server, broker)."""
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    from ..dev.produce import send_all

    _, broker_pid = pids
    prefix = f"bench{tag}rss."
    topics = [f"{prefix}{s}" for s in SOURCES] + [f"{prefix}handoff", f"{prefix}dlq"]
    client = Redis.from_url(redis_url)
    await client.flushdb()
    await create_topics(bootstrap, topics, partitions)
    worker = Worker(workdir, "rss", kafka_bootstrap=bootstrap, redis_url=redis_url, group_id=f"{tag}-rss",
                    topic_prefix=prefix, handoff_topic=f"{prefix}handoff", dlq_topic=f"{prefix}dlq",
                    partitions=partitions, log_level="warning", **extra)
    children.append(worker)
    producer: Any = None
    feeder: asyncio.Task[None] | None = None
    trace = CpuTrace(pids)
    try:
        await worker.wait_ready()
        producer = await started_producer(bootstrap, topics, acks="all", linger_ms=5, max_batch_size=512 * 1024)
        redis_used0 = await _used_memory(client)
        broker_rss0, _ = memory(broker_pid)
        worker_rss0, _ = memory(worker.pid)
        # Place the run on the event clock so that its last journeys start ≥ 2 days before now.
        chunks_high = math.ceil(events / (CHUNK_LEADS * EVENTS_PER_LEAD_LOW))
        start_ms = int(time.time() * 1000) - chunks_high * CHUNK_LEADS * ARRIVAL_MS - 2 * 86_400_000
        state = {"produced": 0, "processed": 0, "leads": 0, "capped_at": 0}
        ahead = min(AHEAD, max(1, events // 10))  # ≤ a tenth: every tenth of the run is polled inside it
        produced_bar = task(f"rss: produce {events:,} events (≤ {ahead:,} ahead)", events)

        async def feed() -> None:
            for chunk, new in chunks(events, seed, max_leads, start_ms):
                if not new and not state["capped_at"]:
                    state["capped_at"] = state["produced"]
                state["leads"] += new
                i = 0
                while i < len(chunk):
                    while (room := ahead - (state["produced"] - state["processed"])) <= 0:
                        await asyncio.sleep(0.1)
                    part = chunk[i : i + room]
                    await send_all(producer, ((e, orjson.dumps(e)) for e in part), prefix, produced_bar)
                    state["produced"] += len(part)
                    i += len(part)
                    await asyncio.sleep(0)  # let the sampler run

        bench_cpu0 = time.process_time()
        trace.start()
        feeder = asyncio.create_task(feed())
        processed_bar = task(f"rss: worker over {events:,} streamed events", events)
        series: list[dict[str, Any]] = []
        next_decile = 1
        shown = 0
        t0 = time.perf_counter()
        last_progress = t0
        while True:
            if not worker.alive():
                raise click.ClickException(f"{worker.log.name}: the worker exited:\n{worker.tail()}")
            if feeder.done() and feeder.exception() is not None:
                raise feeder.exception()  # type: ignore[misc]
            n = await worker.processed()
            t = time.perf_counter()
            if n < 0:  # /metrics did not answer this time
                await asyncio.sleep(0.25)
                continue
            state["processed"] = n
            rss, _ = memory(worker.pid)
            if n > shown:
                processed_bar(n - shown)
                shown, last_progress = n, t
            if next_decile <= 10 and n >= events * next_decile / 10:
                while next_decile <= 10 and n >= events * next_decile / 10:
                    next_decile += 1
                broker_rss, _ = memory(broker_pid)
                handoffs, caches = await _counts(worker)
                series.append({
                    "pct": (next_decile - 1) * 10, "events": n, "seconds": round(t - t0, 1),
                    "worker_rss_mib": round(rss / MIB, 1), "redis_used_mib": round(await _used_memory(client) / MIB, 1),
                    "broker_rss_mib": round(broker_rss / MIB, 1), "leads_produced": state["leads"],
                    "handoffs": handoffs, "caches": caches,
                })
            if n >= events:
                break
            if state["produced"] > n and t - last_progress > STALL_S:
                raise click.ClickException(f"the worker made no progress for {STALL_S:.0f} s at {n:,} of {events:,} "
                                           f"events:\n{worker.tail()}")
            await asyncio.sleep(0.25)
        await feeder
        bench_cpu = time.process_time() - bench_cpu0
        work = await worker.work()
        trace.stop()
        row = measured("rss soak", work, trace, "worker CPU")
        _, worker_peak = memory(worker.pid)
        _, broker_peak = memory(broker_pid)
        redis_used_end = await _used_memory(client)
        worker.stop()
    finally:
        trace.stop()
        if feeder is not None and not feeder.done():
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
        if producer is not None:
            await producer.stop()
        worker.stop()
        # The figures must survive the clean-up: a FLUSHDB of gigabytes outlasted the client's
        # read timeout and lost a 10 M-event run, so Redis frees the data in the background.
        with contextlib.suppress(RedisError):
            await client.flushdb(asynchronous=True)
        await client.aclose()
        deleted = await _delete_topics(bootstrap, topics)
    rss_series = [s["worker_rss_mib"] for s in series]
    low, high = min(rss_series), max(rss_series)
    broker_after, _ = memory(broker_pid)
    leads = state["leads"]
    return {
        "events": events, "produced": state["produced"], "processed": work.events,
        "leads": leads, "max_leads": max_leads,
        "leads_recycled_after_events": state["capped_at"] or None,
        "ahead_max": ahead, "seconds": round(row.seconds, 1), "events_per_s": round(row.rate, 1),
        "worker_cpu_s_per_million": round(row.per_million(row.cpu), 2),
        "redis_cpu_s_per_million": round(row.per_million(row.redis_cpu), 2),
        "broker_cpu_s_per_million": round(row.per_million(row.broker_cpu), 2),
        "bench_cpu_s_per_million": round(bench_cpu / max(1, shown) * 1e6, 2),
        "worker_rss_start_mib": round(worker_rss0 / MIB, 1),
        "worker_rss_min_mib": low, "worker_rss_max_mib": high,
        "worker_rss_spread": round((high - low) / low, 4) if low else None,
        **warm(series),
        "worker_rss_growth_10_to_100": round(rss_series[-1] / rss_series[0] - 1, 4) if rss_series and rss_series[0] else None,
        "worker_peak_rss_mib": round(worker_peak / MIB, 1),
        "redis_used_start_mib": round(redis_used0 / MIB, 1), "redis_used_end_mib": round(redis_used_end / MIB, 1),
        "redis_bytes_per_lead": round((redis_used_end - redis_used0) / leads, 1) if leads else None,
        "broker_rss_start_mib": round(broker_rss0 / MIB, 1), "broker_peak_rss_mib": round(broker_peak / MIB, 1),
        "broker_rss_after_delete_mib": round(broker_after / MIB, 1), "topics_deleted": deleted,
        "series": series,
    }


async def _delete_topics(bootstrap: str, topics: list[str]) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        await admin.delete_topics(topics)
        await asyncio.sleep(1.0)  # the broker lets go of the records
        return True
    except Exception:  # noqa: BLE001 - a broker without DeleteTopics keeps them: scratch data anyway
        return False
    finally:
        await admin.close()


async def stage(ctx: Context, report: Report) -> None:
    """On its own topics and Redis database, first on a fresh broker."""
    report.rss_soak = await rss_soak(
        bootstrap=ctx.bootstrap, redis_url=ctx.url(DB_RSS), pids=ctx.pids, workdir=ctx.workdir, events=ctx.rss_events,
        max_leads=ctx.rss_max_leads, seed=ctx.seed, partitions=ctx.partitions, tag=ctx.tag,
        extra=ctx.extra, children=ctx.children, task=ctx.task)
