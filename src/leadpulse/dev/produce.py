"""Send events to the input topics: a JSONL file (replay) or synthetic journeys."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

import orjson
from aiokafka import AIOKafkaProducer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .. import kafka
from ..settings import Settings
from .simulate import journeys, key_for, topic_for

IN_FLIGHT = 5000


def _from_file(file: BinaryIO) -> Iterator[tuple[dict[str, Any] | None, bytes]]:
    for line in file:
        line = line.strip()
        if not line:
            continue
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError:
            yield None, line
        else:
            yield (data if isinstance(data, dict) else None), line


async def send_all(
    producer: AIOKafkaProducer, items: Iterable[tuple[dict[str, Any] | None, bytes]], prefix: str,
    on_sent: Any = None, restamp: bool = False,
) -> int:
    """Produce every item, keyed by lead so that each lead's events stay in order."""
    pending: list[Any] = []
    sent = 0
    for data, raw in items:
        if data is None:
            # Not an event object: still sent (to the web topic) so the worker dead-letters it
            # with its reason rather than the replay losing it silently.
            topic, key = f"{prefix}web", None
        else:
            if restamp:
                data["occurred_at"] = int(time.time() * 1000)
                raw = orjson.dumps(data)
            topic, key = topic_for(data, prefix), key_for(data)
        pending.append(await producer.send(topic, raw, key=key))
        if len(pending) >= IN_FLIGHT:
            await asyncio.gather(*pending)
            sent += len(pending)
            if on_sent:
                on_sent(len(pending))
            pending.clear()
    if pending:
        await asyncio.gather(*pending)
        sent += len(pending)
        if on_sent:
            on_sent(len(pending))
    return sent


async def produce_events(settings: Settings, file: BinaryIO | None, leads: int, seed: int, restamp: bool) -> int:
    topics = [*settings.input_topics, settings.handoff_topic, settings.dlq_topic]
    await kafka.ensure_topics(settings, topics)
    producer = await kafka.started_producer(settings, topics, acks="all", linger_ms=5)
    try:
        if file is not None:
            items: Iterable[tuple[dict[str, Any] | None, bytes]] = _from_file(file)
            total = None
        else:
            # Journeys of the last days: the worker refuses events older than the model's max_event_age.
            events = list(journeys(leads, seed=seed, start_ms=int(time.time() * 1000) - 3 * 86_400_000))
            items = ((e, orjson.dumps(e)) for e in events)
            total = len(events)
        with Progress(
            TextColumn("producing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False
        ) as progress:
            task = progress.add_task("events", total=total)
            sent = await send_all(
                producer, items, settings.topic_prefix, lambda n: progress.advance(task, n), restamp=restamp
            )
        print(f"sent {sent} events to {settings.kafka_bootstrap}")
        return sent
    finally:
        await producer.stop()
