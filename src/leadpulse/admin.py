"""Operator actions: rebuild Redis from the topics' retention, and forget a lead (erasure)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from redis.asyncio import Redis

from . import kafka, scripts
from .metrics import Metrics
from .model import ScoringModel
from .pipeline import Processor, Topics
from .settings import Settings
from .state import SCORED, LeadStore


@dataclass
class RescoreResult:
    events: int = 0
    scored: int = 0
    duplicates: int = 0
    invalid: int = 0
    transitions: int = 0


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
    """
    redis = Redis.from_url(settings.redis_url.get_secret_value())
    store = LeadStore(redis, model)
    processor = Processor(store, _NoProducer(), Topics(settings.handoff_topic, settings.dlq_topic), Metrics())
    consumer = AIOKafkaConsumer(**kafka.client_options(settings), group_id=None, enable_auto_commit=False)
    result = RescoreResult()
    await consumer.start()
    try:
        await scripts.load_all(redis)
        available = await consumer.topics()
        tps = [
            TopicPartition(topic, p)
            for topic in settings.input_topics if topic in available
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not tps:
            return result
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        total = sum(ends[tp] - begins[tp] for tp in tps)
        remaining = {tp for tp in tps if ends[tp] > begins[tp]}
        for tp in tps:
            consumer.seek(tp, begins[tp])
            if tp not in remaining:
                consumer.pause(tp)
        while remaining:
            fetched = await consumer.getmany(timeout_ms=1000, max_records=batch)
            records = []
            for tp, msgs in fetched.items():
                msgs = [m for m in msgs if m.offset < ends[tp]]
                records.extend(msgs)
                if not msgs or msgs[-1].offset + 1 >= ends[tp]:
                    if msgs or consumer.highwater(tp) is not None:
                        remaining.discard(tp)
                        consumer.pause(tp)
            if not records:
                continue
            valid, invalid = processor.parse(records, int(time.time() * 1000))
            outcome = await store.apply(valid)
            result.events += len(records)
            result.invalid += len(invalid)
            result.scored += sum(1 for o in outcome.outcomes if o == SCORED)
            result.duplicates += sum(1 for o in outcome.outcomes if o != SCORED)
            result.transitions += len(outcome.transitions)
            if on_progress:
                on_progress(result.events, total)
        return result
    finally:
        await consumer.stop()
        await redis.aclose()


async def forget(store: LeadStore, lead_id: str) -> bool:
    """Erase a lead: its state, its dedup set, its index entries. True if it existed."""
    keys = store.keys.lead(lead_id)
    pipe = store.redis.pipeline(transaction=False)
    pipe.delete(keys.state, keys.dedup)
    pipe.zrem(store.keys.due, lead_id)
    pipe.zrem(store.keys.top, lead_id)
    deleted, _, _ = await pipe.execute()
    return bool(deleted)
