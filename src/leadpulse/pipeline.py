"""One batch of Kafka records through the product: validate, score, publish, then commit.

The order is the whole correctness argument. Offsets are committed only after the Redis write
and every handoff and dead letter of the batch are acknowledged by Kafka; a crash anywhere
before that replays the batch, and the replay changes nothing (events are deduplicated in
Redis) except to hand back the transitions the first attempt decided, which are published
under the same deterministic handoff_id and skipped if they already were.
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from . import events as event_contract
from .errors import InvalidEvent
from .events import Event
from .handoff import build, iso, publishes
from .metrics import Metrics
from .model import ScoringModel
from .state import ANONYMOUS, BatchResult, LeadStore, Transition

log = logging.getLogger(__name__)


class Record(Protocol):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int


class Producer(Protocol):
    async def send(self, topic: str, value: bytes, key: bytes | None = None,
                   headers: list[tuple[str, bytes]] | None = None) -> Any: ...


@dataclass(frozen=True, slots=True)
class Topics:
    handoff: str
    dlq: str


class PublishedIds:
    """Handoff ids known to be on the handoff topic: bounded, oldest forgotten first.

    A replay only re-decides the uncommitted tail of a partition (a few batches) and a start
    re-reads the handoff topic's tail (worker.HANDOFF_TAIL per partition), so the capacity only
    needs to hold those; it bounds the worker's memory however long it runs."""

    def __init__(self, capacity: int = 50_000) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity

    def __contains__(self, handoff_id: object) -> bool:
        return handoff_id in self._ids

    def add(self, handoff_id: str) -> None:
        self._ids[handoff_id] = None
        self._ids.move_to_end(handoff_id)
        while len(self._ids) > self._capacity:
            self._ids.popitem(last=False)

    def __len__(self) -> int:
        return len(self._ids)


def dead_letter_headers(record: Record, error: InvalidEvent, now_ms: int) -> list[tuple[str, bytes]]:
    """The original bytes stay the message value (replayable as is); the context rides in headers."""
    return [
        ("leadpulse.dlq.reason", error.reason.encode()),
        ("leadpulse.dlq.message", str(error).encode()[:2048]),
        ("leadpulse.dlq.field", (error.field or "").encode()),
        ("leadpulse.dlq.topic", record.topic.encode()),
        ("leadpulse.dlq.partition", str(record.partition).encode()),
        ("leadpulse.dlq.offset", str(record.offset).encode()),
        ("leadpulse.dlq.time", iso(now_ms).encode()),
    ]


def _observe_all(histogram: Any, amounts: Sequence[float]) -> None:
    """histogram.observe() for each amount, with one update per bucket: a batch of 2000 events
    costs a few lock round trips, not 2000 (the same counts and sum as observing one by one)."""
    try:
        bounds, buckets, total = histogram._upper_bounds, histogram._buckets, histogram._sum
    except AttributeError:  # a prometheus_client without these internals
        for amount in amounts:
            histogram.observe(amount)
        return
    if not amounts:
        return
    per_bucket: dict[int, int] = {}
    for amount in amounts:
        i = bisect_left(bounds, amount)  # the first bound >= amount, as observe() picks it
        per_bucket[i] = per_bucket.get(i, 0) + 1
    total.inc(sum(amounts))
    for i, n in per_bucket.items():
        buckets[i].inc(n)


@dataclass(slots=True)
class Batch:
    """One batch of records on its way through prepare → apply → publish (then commit)."""

    records: Sequence[Record]
    now_ms: int
    valid: list[tuple[Event, str]]
    invalid: list[tuple[Record, InvalidEvent]]
    result: BatchResult | None = None
    counted: bool = False


class Processor:
    def __init__(
        self, store: LeadStore, producer: Producer, topics: Topics, metrics: Metrics,
        *, max_event_bytes: int = event_contract.MAX_EVENT_BYTES, published: PublishedIds | None = None,
    ) -> None:
        self.store = store
        self.model: ScoringModel = store.model
        self.producer = producer
        self.topics = topics
        self.metrics = metrics
        self.max_event_bytes = max_event_bytes
        self.published = published or PublishedIds()

    def parse(self, records: Sequence[Record], now_ms: int) -> tuple[list[tuple[Event, str]], list[tuple[Record, InvalidEvent]]]:
        valid: list[tuple[Event, str]] = []
        invalid: list[tuple[Record, InvalidEvent]] = []
        skew, max_age = self.model.clock_skew, self.model.max_event_age
        for record in records:
            try:
                if record.value is None:
                    raise InvalidEvent("empty", "the message has no value (a tombstone?)")
                # Arrival = the record's broker timestamp (rescore replays months-old records).
                arrived = min(record.timestamp, now_ms) if record.timestamp and record.timestamp > 0 else now_ms
                event = event_contract.parse(record.value, now_ms, skew, self.max_event_bytes, max_age, arrived)
            except InvalidEvent as exc:
                invalid.append((record, exc))
            else:
                valid.append((event, f"{record.topic}:{record.partition}:{record.offset}"))
        return valid, invalid

    def prepare(self, records: Sequence[Record]) -> Batch:
        """The CPU half of a batch, which needs no I/O: runs while Redis applies the batch before."""
        now_ms = int(time.time() * 1000)
        valid, invalid = self.parse(records, now_ms)
        return Batch(records, now_ms, valid, invalid)

    async def apply(self, batch: Batch) -> None:
        """Score the batch in Redis. Safe to repeat: a retry finds the events applied and hands
        back the transitions they caused."""
        if batch.valid:
            started = time.perf_counter()
            batch.result = await self.store.apply(batch.valid, batch.now_ms)
            self.metrics.redis_seconds.labels("apply").observe(time.perf_counter() - started)

    async def publish(self, batch: Batch) -> None:
        """Publish what the batch caused and wait for the broker's acknowledgements.

        Safe to repeat: handoffs already acknowledged are not sent again."""
        result = batch.result
        sends = [self._dead_letter(record, error, batch.now_ms) for record, error in batch.invalid]
        if result is not None:
            sends.extend(self._handoffs(result.transitions))
        if sends:
            # Every send is awaited to its broker acknowledgement before the caller commits.
            await asyncio.gather(*[await s for s in sends])
        if not batch.counted:
            batch.counted = True
            self._count(batch.valid, batch.invalid, result.outcomes if result else [])

    async def sweep(self, now_ms: int) -> int:
        """Publish the demotions decay has caused by now, then acknowledge them in Redis."""
        transitions = await self.store.sweep(now_ms)
        if not transitions:
            return 0
        sends = self._handoffs(transitions)
        if sends:
            await asyncio.gather(*[await s for s in sends])
        await self.store.ack(transitions)
        return len(transitions)

    def _handoffs(self, transitions: Iterable[Transition]) -> list[Any]:
        sends = []
        for t in transitions:
            if not publishes(self.model, t) or t.handoff_id in self.published:
                continue
            record = build(self.model, self.store.explainer, t)
            sends.append(self._send_handoff(t, record))
        return sends

    async def _send_handoff(self, t: Transition, record: dict[str, Any]) -> Any:
        fut = await self.producer.send(
            self.topics.handoff, orjson.dumps(record), key=t.lead_id.encode(),
            headers=[("leadpulse.handoff_id", t.handoff_id.encode())],
        )

        async def acknowledged() -> None:
            await fut
            self.published.add(t.handoff_id)
            self.metrics.handoffs.labels(record["stage"], t.kind).inc()
            log.info("handoff %s %s %s -> %s score=%.1f", t.kind, t.lead_id, record["previous_stage"],
                     record["stage"], t.score)

        return acknowledged()

    async def _dead_letter(self, record: Record, error: InvalidEvent, now_ms: int) -> Any:
        fut = await self.producer.send(
            self.topics.dlq, record.value or b"", key=record.key, headers=dead_letter_headers(record, error, now_ms)
        )

        async def acknowledged() -> None:
            await fut
            self.metrics.dlq.labels(error.reason).inc()

        return acknowledged()

    def _count(self, valid: Sequence[tuple[Event, str]], invalid: Sequence[tuple[Record, InvalidEvent]], outcomes: Sequence[str]) -> None:
        now_s = time.time()
        counts = Counter((event.source, event.type, outcome) for (event, _), outcome in zip(valid, outcomes))
        if invalid:
            counts[("unknown", "unknown", "invalid")] += len(invalid)
        _observe_all(self.metrics.event_latency, [
            max(0.0, now_s - event.occurred_at / 1000) for (event, _), outcome in zip(valid, outcomes) if outcome != ANONYMOUS
        ])
        for (source, type_, outcome), n in counts.items():
            self.metrics.events.labels(source, type_, outcome).inc(n)
        self.metrics.batch_size.observe(len(valid) + len(invalid))
