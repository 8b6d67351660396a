"""One batch of Kafka records through the product: validate, score, publish, then commit.

The order is the whole correctness argument. Offsets are committed only after the Redis write
and every handoff and dead letter of the batch are acknowledged by Kafka; a crash anywhere
before that replays the batch, and the replay changes nothing (events are deduplicated in
Redis) except to hand back the transitions the first attempt decided, which are published
under the same deterministic handoff_id and skipped if they already were.

No record can hold up its partition. A failure while handling one record that a retry would not
change (parsing, matching, packing, a Lua runtime error, building or serialising its handoff)
sends that record to the dead-letter topic with reason `internal`, and the batch goes on without
it: parsing and handoffs are handled record by record; a batch Redis refuses is split until the
records that cause it are found (isolate.py). Failures that say "not now" (Redis or the broker
unavailable) are retried with the whole batch, as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson
from aiokafka.errors import MessageSizeTooLargeError

from . import events as event_contract
from .bounded import RecentIds
from .errors import InternalFailure, InvalidEvent
from .events import Event
from .handoff import build, iso, publishes
from .isolate import bisect, retriable
from .metrics import Metrics
from .model import ScoringModel
from .outcome import build as build_outcome, sla_seconds
from .state import ANONYMOUS, BatchResult, LeadStore, OutcomeSnapshot, Transition
from .who import Who

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
    outcomes: str = "leads.outcomes"


def _header(text: str) -> bytes:
    # Messages may quote the input: never let the header's encoding be what fails.
    return text.encode("utf-8", "backslashreplace")[:2048]


def dead_letter_headers(record: Record, error: InvalidEvent, now_ms: int) -> list[tuple[str, bytes]]:
    """The original bytes stay the message value (replayable as is); the context rides in headers."""
    headers = [
        ("leadpulse.dlq.reason", _header(error.reason)),
        ("leadpulse.dlq.message", _header(str(error))),
        ("leadpulse.dlq.field", _header(error.field or "")),
        ("leadpulse.dlq.topic", _header(record.topic)),
        ("leadpulse.dlq.partition", str(record.partition).encode()),
        ("leadpulse.dlq.offset", str(record.offset).encode()),
        ("leadpulse.dlq.time", iso(now_ms).encode()),
    ]
    if isinstance(error, InternalFailure):
        headers.append(("leadpulse.dlq.exception", _header(error.exception)))
    return headers


def _where(exc: BaseException) -> str:
    """file:line of the innermost frame a failure was raised in, for the log line."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}" if tb is not None else "?"


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


@dataclass(frozen=True, slots=True)
class Handoff:
    """A transition as published: its record serialised once, whatever the retries."""

    transition: Transition
    key: bytes
    value: bytes
    stage: str
    previous_stage: str


@dataclass(slots=True)
class Batch:
    """One batch of records on its way through prepare → apply → publish (then commit)."""

    records: Sequence[Record]
    now_ms: int
    valid: list[tuple[Event, str]]
    invalid: list[tuple[Record, InvalidEvent]]
    #: the record each valid event came from
    origins: list[Record]
    result: BatchResult | None = None
    #: built at the first publish, kept for its retries
    handoffs: list[Handoff] | None = None
    #: the CRM outcomes' records (leads.outcomes), serialised at the first publish
    outcomes: list[tuple[OutcomeSnapshot, bytes]] | None = None
    counted: bool = False
    #: the shadow model's result for the batch (shadow.py), when one runs
    shadow: Any = None


class Processor:
    def __init__(
        self, store: LeadStore, producer: Producer, topics: Topics, metrics: Metrics,
        *, max_event_bytes: int = event_contract.MAX_EVENT_BYTES, published: RecentIds[str] | None = None,
        who: Who | None = None,
    ) -> None:
        self.store = store
        self.model: ScoringModel = store.model
        self.producer = producer
        self.topics = topics
        self.metrics = metrics
        self.max_event_bytes = max_event_bytes
        #: who handoffs name and their CRM link (LEADPULSE_HANDOFF_WHO, LEADPULSE_CRM_URL_TEMPLATE)
        self.who = who or Who()
        # Handoff ids known to be on the handoff topic. A replay only re-decides the uncommitted tail
        # of a partition (a few batches) and a start re-reads the topic's tail (worker.HANDOFF_TAIL
        # per partition): the capacity covers those, and bounds memory however long the worker runs.
        self.published: RecentIds[str] = published if published is not None else RecentIds(50_000)
        #: a candidate model scored beside this one (shadow.py; LEADPULSE_SHADOW_MODEL), or None
        self.shadow: Any = None
        metrics.sales_sla.set((self.model.lifecycle.sla or 0) / 1000)
        if self.model.lifecycle.sla:  # from the start: the alert's increase() sees the first one
            metrics.handoffs.labels(self.model.stages[-1].name, "sla_overdue")

    def prepare(self, records: Sequence[Record]) -> Batch:
        """The CPU half of a batch, which needs no I/O: runs while Redis applies the batch before."""
        self.metrics.batch_received()
        now_ms = int(time.time() * 1000)
        valid: list[tuple[Event, str]] = []
        invalid: list[tuple[Record, InvalidEvent]] = []
        origins: list[Record] = []
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
            except Exception as exc:  # noqa: BLE001 - the contract let through what parsing cannot take
                invalid.append((record, _internal(record, exc)))
            else:
                valid.append((event, f"{record.topic}:{record.partition}:{record.offset}"))
                origins.append(record)
        return Batch(records, now_ms, valid, invalid, origins)

    async def apply(self, batch: Batch) -> None:
        """Score the batch in Redis. Safe to repeat: a retry finds the events applied and hands
        back the transitions they caused. A batch refused for good is applied in parts, and the
        records that fail alone are moved to `batch.invalid`."""
        if batch.valid:
            started = time.perf_counter()
            try:
                if self.shadow is None:
                    batch.result = await self.store.apply(batch.valid, batch.now_ms)
                else:
                    batch.result, batch.shadow = await self.shadow.beside(
                        self.store.apply(batch.valid, batch.now_ms), batch.valid, batch.now_ms)
            except Exception as exc:
                if retriable(exc):
                    raise
                await self._isolate(batch, exc)
            self.metrics.redis_seconds.labels("apply").observe(time.perf_counter() - started)

    async def _isolate(self, batch: Batch, failure: Exception) -> None:
        valid, now_ms = batch.valid, batch.now_ms
        log.warning("a batch of %d events failed (%s: %s at %s); applying it in parts to find the records that cause it",
                    len(valid), type(failure).__name__, failure, _where(failure))
        split = await bisect(len(valid), lambda start, end: self.store.apply(valid[start:end], now_ms), failure)
        # Nothing changes in `batch` until the split is complete: a transient failure during it
        # retries the whole batch, which is then a replay.
        outcomes = [""] * len(valid)
        transitions: list[Transition] = []
        crm: list[OutcomeSnapshot] = []
        for start, end, result in split.parts:
            outcomes[start:end] = result.outcomes
            transitions.extend(result.transitions)
            crm.extend(result.crm)
        batch.result = BatchResult(outcomes, transitions, crm)
        _drop(batch, split.culprits)

    async def publish(self, batch: Batch) -> None:
        """Publish what the batch caused and wait for the broker's acknowledgements.

        Safe to repeat: handoffs already acknowledged are not sent again."""
        if batch.handoffs is None:
            batch.handoffs = self._batch_handoffs(batch)
        if batch.outcomes is None:
            batch.outcomes = self._outcome_records(batch)
        result = batch.result
        sends = [self._dead_letter(record, error, batch.now_ms) for record, error in batch.invalid]
        sends.extend(self._send_handoff(h) for h in batch.handoffs if h.transition.handoff_id not in self.published)
        # Outcome records go out like handoffs: acknowledged before the commit, deterministic ids.
        sends.extend(self._send_outcome(o, value) for o, value in batch.outcomes if o.outcome_id not in self.published)
        if self.shadow is not None:
            sends.extend(self.shadow.sends(batch.shadow, result))
        if sends:
            # Every send is awaited to its broker acknowledgement before the caller commits.
            await asyncio.gather(*[await s for s in sends])
        if not batch.counted:
            batch.counted = True
            self._count(batch.valid, batch.invalid, result.outcomes if result else [])
            self.metrics.batch_done()

    async def sweep(self, now_ms: int, due_at: list[float] | None = None,
                    skipped: list[tuple[str, str, Exception]] | None = None) -> int:
        """Publish the demotions decay has caused by now, then acknowledge them in Redis. `due_at`
        receives the due times the pass read, `skipped` the leads it could not sweep (LeadStore.sweep)."""
        swept = await self.settle(await self.store.sweep(now_ms, due_at=due_at, skipped=skipped))
        if self.shadow is not None:
            await self.shadow.sweep(now_ms)
        return swept

    async def settle(self, transitions: list[Transition]) -> int:
        """Publish transitions no event caused (the sweep's, a model change's: reeval.py), then
        acknowledge them in Redis, which clears them from the leads' outboxes."""
        if not transitions:
            return 0
        handoffs, failed = self._handoffs(transitions)
        for t, exc in failed:  # decay alone caused it: there is no record to dead-letter
            log.error("handoff %s of lead %r could not be built (%s: %s at %s); it is not published",
                      t.handoff_id, t.lead_id, type(exc).__name__, exc, _where(exc))
        sends = [self._send_handoff(h) for h in handoffs]
        if sends:
            await asyncio.gather(*[await s for s in sends])
        await self.store.ack(transitions)
        return len(transitions)

    def _handoffs(self, transitions: Iterable[Transition]) -> tuple[list[Handoff], list[tuple[Transition, Exception]]]:
        """The handoffs to publish, each built and serialised on its own: (built, failed)."""
        built: list[Handoff] = []
        failed: list[tuple[Transition, Exception]] = []
        for t in transitions:
            try:
                if not publishes(self.model, t) or t.handoff_id in self.published:
                    continue
                record = build(self.model, t, self.who)
                built.append(Handoff(t, t.lead_id.encode(), orjson.dumps(record), record["stage"], record["previous_stage"]))
            except Exception as exc:  # noqa: BLE001 - this transition's record only; the caller decides
                failed.append((t, exc))
        return built, failed

    def _batch_handoffs(self, batch: Batch) -> list[Handoff]:
        """The batch's handoffs; a record whose handoff cannot be built is dead-lettered (its
        points stay applied: the handoff is what is lost, and the dead letter says so)."""
        if batch.result is None:
            return []
        handoffs, failed = self._handoffs(batch.result.transitions)
        if failed:
            first: dict[str, int] = {}
            for i, (event, _) in enumerate(batch.valid):
                first.setdefault(event.event_id, i)
            culprits: dict[int, Exception] = {}
            for t, exc in failed:
                culprit = first.get(t.event_id) if t.event_id is not None else None
                if culprit is None:  # caused by a visitor's earlier events merged into the lead
                    log.error("handoff %s of lead %r could not be built (%s: %s at %s); it is not published",
                              t.handoff_id, t.lead_id, type(exc).__name__, exc, _where(exc))
                else:
                    culprits.setdefault(culprit, exc)
            _drop(batch, culprits)
        return handoffs

    def _outcome_records(self, batch: Batch) -> list[tuple[OutcomeSnapshot, bytes]]:
        """Each applied CRM outcome's record; one that cannot be built is logged and skipped
        (the outcome itself stays applied, and its handoff, if any, is published)."""
        out = []
        for o in batch.result.crm if batch.result else ():
            try:
                out.append((o, orjson.dumps(build_outcome(self.model, o))))
            except Exception as exc:  # noqa: BLE001 - this record only
                log.error("outcome record %s of lead %r could not be built (%s: %s at %s); it is not published",
                          o.outcome_id, o.lead_id, type(exc).__name__, exc, _where(exc))
        return out

    async def _send_outcome(self, o: OutcomeSnapshot, value: bytes) -> Any:
        fut = await self.producer.send(self.topics.outcomes, value, key=o.lead_id.encode(),
                                       headers=[("leadpulse.outcome_id", o.outcome_id.encode())])

        async def acknowledged() -> None:
            await fut
            if o.outcome_id in self.published:  # a retry of the batch: measured once
                return
            self.published.add(o.outcome_id)
            self.metrics.outcomes.labels(o.outcome).inc()
            answered = sla_seconds(self.model, o)
            if answered is not None:
                self.metrics.sla_answer.labels(o.outcome).observe(answered)

        return acknowledged()

    async def _send_handoff(self, h: Handoff) -> Any:
        t = h.transition
        fut = await self.producer.send(
            self.topics.handoff, h.value, key=h.key, headers=[("leadpulse.handoff_id", t.handoff_id.encode())],
        )

        async def acknowledged() -> None:
            await fut
            self.published.add(t.handoff_id)
            self.metrics.handoffs.labels(h.stage, t.kind).inc()
            log.info("handoff %s %s %s -> %s score=%.1f", t.kind, t.lead_id, h.previous_stage, h.stage, t.score)

        return acknowledged()

    async def _dead_letter(self, record: Record, error: InvalidEvent, now_ms: int) -> Any:
        value, key, headers = record.value or b"", record.key, dead_letter_headers(record, error, now_ms)
        try:
            fut = await self.producer.send(self.topics.dlq, value, key=key, headers=headers)
        except MessageSizeTooLargeError:
            # The input topic took more than one producer request holds once headers are added:
            # keep the head of it and say how long it was, rather than stop the partition.
            headers.append(("leadpulse.dlq.truncated_from", str(len(value)).encode()))
            fut = await self.producer.send(self.topics.dlq, value[: self.max_event_bytes],
                                           key=key[:1024] if key else key, headers=headers)

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


def _internal(record: Record, exc: Exception) -> InternalFailure:
    log.warning("dead-lettering %s:%d:%d (reason internal): %s: %s at %s", record.topic, record.partition,
                record.offset, type(exc).__name__, exc, _where(exc))
    return InternalFailure(exc)


def _drop(batch: Batch, culprits: dict[int, Exception]) -> None:
    """Move the valid records at these indexes to `batch.invalid`, as internal failures."""
    if not culprits:
        return
    keep = [i for i in range(len(batch.valid)) if i not in culprits]
    for i, exc in sorted(culprits.items()):
        record = batch.origins[i]
        batch.invalid.append((record, _internal(record, exc)))
    batch.valid = [batch.valid[i] for i in keep]
    batch.origins = [batch.origins[i] for i in keep]
    if batch.result is not None:
        batch.result.outcomes = [batch.result.outcomes[i] for i in keep]
