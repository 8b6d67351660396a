"""Stage `latency`: the time from an event's `occurred_at` to its handoff record on the handoff
topic, at a fixed offered load (`--rate` events/s for `--latency-seconds`), with the worker
already running on its own topics; and the worker's CPU share while it worked."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import click
import orjson

from ..events import SOURCES
from ..metrics import BATCH_STEPS
from .children import Worker
from .context import DB_LATENCY, Context
from .eventset import create_topics, started_producer
from .hop import LINGER_MS, ceiling_run, offer, quantiles
from .measure import runqueue_wait
from .report import Report


def live_events(total: int, prefix: str) -> list[dict[str, Any]]:
    """The stage's traffic: the first `total` events of total/12 leads' journeys (seed 99), leads
    far enough along to reach MQL and SQL (scripts/lua_callgrind.py counts them too)."""
    from ..dev.simulate import journeys

    return list(itertools.islice(journeys(max(50, total // 12), seed=99, prefix=prefix), total))


async def latency_run(bootstrap: str, prefix: str, handoff_topic: str, rate: float, seconds: float,
                      on_progress: Callable[[int], None], worker: Worker, settle_s: float = 300.0) -> dict[str, Any]:
    """Offer `rate` events/s (occurred_at = send time); time each handoff from its trigger's occurred_at,
    until `worker` has handled every offered event and each handoff it published has been read."""
    from aiokafka import AIOKafkaConsumer

    from ..dev.simulate import key_for, topic_for

    total = int(rate * seconds)
    events = live_events(total, f"lat{uuid.uuid4().hex[:6]}")
    occurred: dict[str, int] = {}
    latencies: list[float] = []
    # each handoff's time split at its record's timestamp (CreateTime: when the worker sent it)
    in_worker: list[float] = []
    out_hop: list[float] = []
    consumer = AIOKafkaConsumer(handoff_topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=5)
    await consumer.start()
    producer = await started_producer(bootstrap, [f"{prefix}{s}" for s in SOURCES], acks="all", linger_ms=LINGER_MS)
    stop = asyncio.Event()
    handoffs = {"n": 0, "timed": 0}

    async def read() -> None:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=50)
            arrived = time.time()
            for records in batch.values():
                for r in records:
                    handoffs["n"] += 1
                    trigger = orjson.loads(r.value).get("triggered_by_event_id")
                    if trigger in occurred:
                        handoffs["timed"] += 1
                        latencies.append(arrived - occurred[trigger] / 1000)
                        in_worker.append((r.timestamp - occurred[trigger]) / 1000)
                        out_hop.append(arrived - r.timestamp / 1000)

    reader = asyncio.create_task(read())
    def send(i: int) -> Awaitable[Any]:
        e = events[i]
        e["occurred_at"] = int(time.time() * 1000)
        occurred[e["event_id"]] = e["occurred_at"]
        return producer.send(topic_for(e, prefix), orjson.dumps(e), key=key_for(e))

    try:
        offered = await offer(total, rate, send, on_progress)
        # The worker's own counts say when the last handoffs are in: a slow machine loses none of
        # them (they are the tail of the distribution), a fast one waits for nothing.
        deadline = time.monotonic() + settle_s
        while True:
            done, published = await worker.counts()
            if done >= total and handoffs["n"] >= published:
                break
            if time.monotonic() > deadline or not worker.alive():
                raise click.ClickException(
                    f"latency: {done:,} of {total:,} events handled, {handoffs['n']:,} of {published:,} handoffs "
                    f"read after {settle_s:.0f} s:\n{worker.tail()}")
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await reader
        await producer.stop()
        await consumer.stop()
    return {
        "offered_events_per_s": round(offered, 1), "events": total, "handoffs": handoffs["n"],
        "timed_handoffs": handoffs["timed"], **quantiles(latencies),
        "to_worker_send": quantiles(in_worker), "worker_send_to_read": quantiles(out_hop),
    }


def batch_steps(samples: list[Any], span_s: float, cpu_s: float) -> dict[str, Any]:
    """The worker's batches in the run, from its own histograms: how many, their mean size, the
    mean time per batch of each step from fetch to commit (`leadpulse_batch_stage_seconds`), the
    share of its working span (`span_s`) the apply stage was busy (near 1, batches queue), and its
    CPU (`cpu_s` over that span) per batch: what a batch costs, whatever its size, shows there."""
    def by_step(name: str) -> dict[str, float]:
        return {s.labels["step"]: s.value for s in samples if s.name == name}

    sums, counts = by_step("leadpulse_batch_stage_seconds_sum"), by_step("leadpulse_batch_stage_seconds_count")
    sizes = {s.name: s.value for s in samples if s.name.startswith("leadpulse_batch_size_events_")}
    n = int(sizes.get("leadpulse_batch_size_events_count", 0))
    return {
        "count": n, "mean_events": round(sizes.get("leadpulse_batch_size_events_sum", 0) / n, 1) if n else None,
        "mean_ms": {step: round(1000 * sums[step] / counts[step], 2) for step in BATCH_STEPS if counts.get(step)},
        "apply_busy_share": round(sums.get("apply", 0) / span_s, 3) if span_s else None,
        "worker_cpu_ms_per_batch": round(1000 * cpu_s / n, 2) if n else None,
    }


def _absolute(advance: Callable[[int], None]) -> Callable[[int], None]:
    state = {"n": 0}

    def update(n: int) -> None:
        if n > state["n"]:
            advance(n - state["n"])
            state["n"] = n

    return update


async def stage(ctx: Context, report: Report) -> None:
    from ..settings import Settings

    await ctx.flush(DB_LATENCY)
    prefix = f"bench{ctx.tag}lat."
    # the ceiling first, at the same rate through the same broker, with the worker's fetch wait
    wait_ms = int(ctx.extra.get("batch_wait_ms", Settings.model_fields["batch_wait_ms"].default))
    ceiling = await ceiling_run(ctx.bootstrap, f"{prefix}hop", ctx.partitions, ctx.rate, ctx.latency_seconds, wait_ms,
                                _absolute(ctx.task(f"latency ceiling at {ctx.rate:,.0f} msgs/s", int(ctx.rate * ctx.latency_seconds))))
    handoff = f"{prefix}handoff"
    await create_topics(ctx.bootstrap, [f"{prefix}{s}" for s in SOURCES] + [handoff], ctx.partitions)
    w = ctx.worker("latency", ctx.url(DB_LATENCY), group_id=f"{ctx.tag}-lat", topic_prefix=prefix,
                   handoff_topic=handoff, dlq_topic=f"{prefix}dlq", log_level="warning")
    await w.wait_ready()
    await asyncio.sleep(1.0)
    total = int(ctx.rate * ctx.latency_seconds)
    pids = {"worker": w.pid, "redis": ctx.pids[0], "broker": ctx.pids[1]}
    waited0, t0 = {k: runqueue_wait(pid) for k, pid in pids.items()}, time.monotonic()
    report.latency = await latency_run(ctx.bootstrap, prefix, handoff, ctx.rate, ctx.latency_seconds,
                                       _absolute(ctx.task(f"latency at {ctx.rate:,.0f} events/s offered", total)), w)
    # how long each was runnable but had no CPU (other processes on the machine had it), as a
    # share of the run's wall time (threads added: the broker's can exceed 1)
    span = time.monotonic() - t0
    report.latency["runqueue_wait_share"] = {k: round((runqueue_wait(pid) - waited0[k]) / span, 3)
                                             for k, pid in pids.items()}
    report.latency["ceiling"] = ceiling
    work = await w.work()
    # its CPU over its own span: from the first offered batch to the last one handled
    report.latency["worker_cpu_share"] = round(work.cpu / work.seconds, 3) if work.seconds else None
    report.latency["batches"] = batch_steps(await w.metrics() or [], work.seconds, work.cpu)
    w.stop()
