"""Operator actions: rebuild Redis from the topics' retention, and forget a lead (erasure)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer

from . import erasure, kafka, scripts
from .metrics import Metrics
from .model import ScoringModel
from .pipeline import Processor, Topics
from .settings import Settings
from .bounds import Retention
from .state import SCORED, LeadStore, connect


@dataclass
class RescoreResult:
    events: int = 0
    scored: int = 0
    duplicates: int = 0
    invalid: int = 0
    transitions: int = 0
    #: records skipped, by dead-letter reason (`internal`: one that failed while being applied)
    skipped: Counter[str] = field(default_factory=Counter)


class _NoProducer:
    """Rescoring publishes nothing: every handoff it re-derives was published the first time,
    under the same deterministic id."""

    async def send(self, *args: object, **kwargs: object) -> object:
        raise AssertionError("rescore never publishes")


async def rescore(
    settings: Settings, model: ScoringModel, *, batch: int = 2000,
    on_progress: Callable[[int, int], None] | None = None,
) -> RescoreResult:
    """Re-apply every event still retained on the input topics, up to their current ends.

    Idempotent: events Redis already holds are duplicates and change nothing, so it is safe
    while workers run. After Redis lost its data, this restores every lead's score and stage.
    No record stops it: one that is invalid, or fails while being applied, is skipped and
    counted by reason (the worker dead-lettered it when it first came).
    """
    redis = connect(settings.redis_url.get_secret_value(), settings.redis_cluster)
    store = LeadStore(redis, model, retention=Retention.from_settings(settings))
    processor = Processor(store, _NoProducer(), Topics(settings.handoff_topic, settings.dlq_topic), Metrics())
    consumer = AIOKafkaConsumer(**kafka.client_options(settings), group_id=None, enable_auto_commit=False)
    result = RescoreResult()
    await consumer.start()
    try:
        await scripts.load_all(redis)
        tps = await kafka.partitions(consumer, settings.input_topics)
        if not tps:
            return result
        ends = await kafka.high_watermarks(consumer, tps)
        begins = await consumer.beginning_offsets(tps)
        total = sum(ends[tp] - begins[tp] for tp in tps)
        pending = [tp for tp in tps if ends[tp] > begins[tp]]
        while pending:
            fetched = await consumer.getmany(*pending, timeout_ms=1000, max_records=batch)
            records = [m for tp, msgs in fetched.items() for m in msgs if m.offset < ends[tp]]
            pending = [tp for tp in pending if await consumer.position(tp) < ends[tp]]
            if not records:
                continue
            prepared = processor.prepare(records)
            await processor.apply(prepared)  # splits a batch Redis refuses, like the worker
            outcomes = prepared.result.outcomes if prepared.result else []
            result.events += len(records)
            result.invalid += len(prepared.invalid)
            result.skipped.update(error.reason for _, error in prepared.invalid)
            result.scored += sum(1 for o in outcomes if o == SCORED)
            result.duplicates += sum(1 for o in outcomes if o != SCORED)
            result.transitions += len(prepared.result.transitions) if prepared.result else 0
            if on_progress:
                on_progress(result.events, total)
        return result
    finally:
        await consumer.stop()
        await redis.aclose()


async def forget(store: LeadStore, lead_id: str) -> bool:
    """Erase a lead (erasure.erase): its data and its visitors' links go, a tombstone stays
    so that its events (replayed, rescored, merged) cannot bring it back. True if it existed.
    What stays in Kafka: docs/operations.md, Erasure."""
    return await erasure.erase(store, lead_id)
