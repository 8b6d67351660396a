"""The event set every throughput stage reads: the first `--events` (in time order) of the
journeys of `--leads` leads, produced once to the run's topics."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import click
import orjson

from ..events import SOURCES
from .context import Context
from .measure import cpu_seconds
from .report import Report


def event_set(n_events: int, n_leads: int, seed: int, start_ms: int, prefix: str = "lead") -> list[dict[str, Any]]:
    """The first `n_events` (in time order) of the journeys of `n_leads` leads.

    A visitor's anonymous page views are sent under its lead's id (the identify still carries
    the cookie, so linking runs). Merging an anonymous log is sensitive to the order the
    visitor's and the lead's partitions are read in (window caps depend on the order awards
    are made in), so with anonymous ids two correct runs could end with different scores, and
    the bench compares final scores between runs.
    """
    from ..dev.simulate import journeys

    out: list[dict[str, Any]] = []
    for event in journeys(n_leads, seed=seed, start_ms=start_ms, prefix=prefix):
        if "lead_id" not in event:
            event["lead_id"] = event.pop("anonymous_id").removeprefix("anon-")
        out.append(event)
        if len(out) >= n_events:
            break
    return out


def lead_ids(events: Sequence[dict[str, Any]]) -> list[str]:
    return sorted({e["lead_id"] for e in events if e.get("lead_id")})


async def produce(bootstrap: str, prefix: str, events: Sequence[dict[str, Any]], on_sent: Callable[[int], None]) -> float:
    from ..dev.produce import send_all

    producer = await started_producer(bootstrap, [f"{prefix}{s}" for s in SOURCES],
                                      acks="all", linger_ms=5, max_batch_size=512 * 1024)
    try:
        started = time.perf_counter()
        await send_all(producer, ((e, orjson.dumps(e)) for e in events), prefix, on_sent)
        return time.perf_counter() - started
    finally:
        await producer.stop()


async def started_producer(bootstrap: str, topics: Sequence[str], **options: Any) -> Any:
    """The bench's producers are made as the product's are (kafka.started_producer)."""
    from .. import kafka
    from ..settings import load_settings

    return await kafka.started_producer(load_settings(kafka_bootstrap=bootstrap), topics, **options)


async def create_topics(bootstrap: str, names: Sequence[str], partitions: int) -> None:
    from .. import kafka
    from ..settings import load_settings

    await kafka.ensure_topics(load_settings(kafka_bootstrap=bootstrap, partitions=partitions), names)


async def end_offsets(bootstrap: str, topics: Sequence[str]) -> dict[Any, int]:
    from aiokafka import AIOKafkaConsumer

    from ..kafka import high_watermarks, partitions

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        return await high_watermarks(consumer, await partitions(consumer, topics))
    finally:
        await consumer.stop()


@dataclass
class EventSet:
    events: list[dict[str, Any]]
    leads: list[str]  # their ids, sorted
    ends: dict[Any, int]  # the end offset of every partition of the run's topics

    @property
    def total(self) -> int:
        return len(self.events)


async def produce_set(ctx: Context, report: Report) -> EventSet:
    """Make the event set and produce it to the run's topics, once."""
    start_ms = int(time.time() * 1000) - 4 * 86_400_000  # in the past; no decay crossing is due during the run
    events = event_set(ctx.n_events, ctx.n_leads, ctx.seed, start_ms)
    leads = lead_ids(events)
    report.events, report.leads, report.journeys = len(events), len(leads), ctx.n_leads
    total = len(events)
    await create_topics(ctx.bootstrap, ctx.topics, ctx.partitions)
    produced = ctx.task("produce the event set", total)
    broker_pid = ctx.pids[1]
    broker0 = cpu_seconds(broker_pid)
    seconds = await produce(ctx.bootstrap, ctx.prefix, events, produced)
    report.produce = {"events": total, "seconds": round(seconds, 2), "events_per_s": round(total / seconds, 1),
                      "broker_cpu_s": round(cpu_seconds(broker_pid) - broker0, 2)}
    ends = await end_offsets(ctx.bootstrap, ctx.topics)
    if sum(ends.values()) != total:
        raise click.ClickException(f"the broker holds {sum(ends.values())} events, {total} were produced")
    return EventSet(events, leads, ends)
