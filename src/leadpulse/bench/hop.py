"""The latency ceiling (part of stage `latency`): raw aiokafka through the same broker at the same
offered rate, no processing. A producer as the latency stage's (acks=all, linger 5 ms) sends
messages the size of an event to one topic with the input topics' partitions; a consumer reads
them with `getmany()` and the worker's `fetch.max.wait.ms` (LEADPULSE_BATCH_WAIT_MS). Each
message's time is send → read: what the broker alone costs one hop, on the machine as loaded as
it is during the run, so LeadPulse's occurred_at → handoff can be compared with it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from .eventset import create_topics, started_producer

#: the producer of the latency stage and of this ceiling (the issue's measurement by hand)
LINGER_MS = 5


def quantiles(latencies_s: list[float]) -> dict[str, float | None]:
    """p50, p90, p99 and max in milliseconds (latencies in seconds, any order)."""
    xs = sorted(latencies_s)

    def q(p: float) -> float | None:
        return round(xs[min(len(xs) - 1, int(p * len(xs)))] * 1000, 1) if xs else None

    return {"p50_ms": q(0.50), "p90_ms": q(0.90), "p99_ms": q(0.99), "max_ms": round(xs[-1] * 1000, 1) if xs else None}


async def offer(total: int, rate: float, send: Callable[[int], Awaitable[Any]], on_progress: Callable[[int], None]) -> float:
    """Send `total` messages at `rate` a second (`send(i)` returns message i's delivery future) and
    wait for every acknowledgement; return the rate offered. The ceiling and the latency stage
    offer their load the same way, so their figures compare."""
    sent, pending = 0, []
    t0 = time.perf_counter()
    while sent < total:
        due = min(total, int((time.perf_counter() - t0) * rate))
        while sent < due:
            pending.append(await send(sent))
            sent += 1
        if len(pending) > 2000:
            await asyncio.gather(*pending)
            pending.clear()
        on_progress(sent)
        await asyncio.sleep(0.005)
    offered = sent / (time.perf_counter() - t0)
    await asyncio.gather(*pending)
    return offered


async def ceiling_run(bootstrap: str, topic: str, partitions: int, rate: float, seconds: float, fetch_wait_ms: int,
                      on_progress: Callable[[int], None], size: int = 400, settle_s: float = 120.0) -> dict[str, Any]:
    """Send `rate` messages/s for `seconds` and time each from its send to its read."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    await create_topics(bootstrap, [topic], partitions)
    total = int(rate * seconds)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=fetch_wait_ms)
    await consumer.start()
    producer = await started_producer(bootstrap, [topic], acks="all", linger_ms=LINGER_MS)
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    latencies: list[float] = []
    stop = asyncio.Event()
    pad = b"x" * max(0, size - 40)

    async def read() -> None:
        while not stop.is_set() and len(latencies) < total:
            batch = await consumer.getmany(timeout_ms=50)
            arrived = time.time()
            for records in batch.values():
                for r in records:
                    latencies.append(arrived - orjson.loads(r.value)["t"])

    reader = asyncio.create_task(read())
    def send(i: int) -> Awaitable[Any]:
        return producer.send(topic, orjson.dumps({"t": time.time(), "pad": pad.decode()}), key=b"%d" % (i % 997))

    try:
        offered = await offer(total, rate, send, on_progress)
        await asyncio.wait_for(asyncio.shield(reader), settle_s)
    finally:
        stop.set()
        await asyncio.gather(reader, return_exceptions=True)
        await producer.stop()
        await consumer.stop()
    return {"offered_per_s": round(offered, 1), "messages": total, "read": len(latencies),
            "fetch_max_wait_ms": fetch_wait_ms, "linger_ms": LINGER_MS, **quantiles(latencies)}
