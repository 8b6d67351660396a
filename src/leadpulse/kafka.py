"""Kafka plumbing shared by the worker, the collector, alerts, the CLI and the tests: client options,
consumer groups, topics, commits, reads."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterable
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaTimeoutError
from aiokafka.structs import OffsetAndMetadata

from .retry import Retry
from .settings import Settings

log = logging.getLogger("leadpulse.kafka")

#: Tansu holds a joining member for session_timeout/2 (Apache Kafka: group.initial.rebalance.delay.ms);
#: Faust's default of 60 s made a first start wait 30 s. 10 s is aiokafka's own default.
SESSION_TIMEOUT_MS = 10_000


async def started(client: Any) -> Any:
    """Start an aiokafka client, or close it: a client whose start failed cannot start again,
    so callers retrying with backoff make a fresh one per attempt."""
    try:
        await client.start()
    except BaseException:
        await client.stop()
        raise
    return client


async def started_producer(settings: Settings, topics: Iterable[str], **options: Any) -> AIOKafkaProducer:
    """Start a producer for `topics` that keeps their partition leaders in its metadata.

    aiokafka (0.14) learns the topics the cluster has at start from an all-topics metadata
    request but tracks only topics it later had to look up: the first send to a topic created
    after the start narrows every refresh to that topic, the others drop out of its metadata,
    and their sends wait for a leader that never returns until request_timeout_ms (40 s) fails
    them with NotLeaderForPartitionError. Naming every topic we write to keeps each refresh
    asking for all of them; awaiting the refresh has their leaders known before the first send.
    (tests/test_producer_topics.py shows the library behaviour and this fix.)
    """
    producer = await started(AIOKafkaProducer(**client_options(settings), **options))
    try:
        await producer.client.set_topics(list(topics))
    except BaseException:
        await producer.stop()
        raise
    return producer


async def commit_owned(
    consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, OffsetAndMetadata], retry: Retry,
) -> dict[TopicPartition, OffsetAndMetadata]:
    """Commit the offsets of partitions still assigned to us; return what was committed.

    A commit refused because the group moved on is not an error: the partitions' new owner
    consumes from the last commit, and everything we do per record is idempotent.
    """
    owned = {tp: o for tp, o in offsets.items() if tp in consumer.assignment()}
    if not owned:
        return {}
    try:
        # Both are KafkaErrors a retry cannot cure: the partitions are no longer ours to commit.
        await retry(lambda: consumer.commit(owned), "commit", fatal=(CommitFailedError, IllegalStateError))
    except (CommitFailedError, IllegalStateError) as exc:
        log.warning("commit refused after a rebalance (%s); the new owner replays the batch", exc)
        return {}
    return owned


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    return ssl.create_default_context(cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None)


def client_options(settings: Settings) -> dict[str, Any]:
    """aiokafka keyword arguments for the configured cluster and its security settings."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": settings.kafka_security_protocol,
    }
    context = _ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.kafka_sasl_mechanism:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        password = settings.kafka_sasl_password
        options["sasl_plain_password"] = password.get_secret_value() if password else None
    return options


def group_options(settings: Settings, group_id: str) -> dict[str, Any]:
    """aiokafka consumer arguments for a member of `group_id` that commits explicitly, after its work."""
    return {
        **client_options(settings), "group_id": group_id, "enable_auto_commit": False,
        "session_timeout_ms": SESSION_TIMEOUT_MS, "heartbeat_interval_ms": SESSION_TIMEOUT_MS // 3,
    }


def faust_credentials(settings: Settings) -> Any:
    context = _ssl_context(settings)
    if settings.kafka_sasl_mechanism:
        password = settings.kafka_sasl_password
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=password.get_secret_value() if password else None,
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


async def ensure_topics(settings: Settings, names: Iterable[str]) -> None:
    """Create missing topics with the configured partitions; existing ones are left as they are."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            await admin.create_topics(
                [NewTopic(n, settings.partitions, settings.replication_factor) for n in missing]
            )
    finally:
        await admin.close()


async def high_watermarks(consumer: AIOKafkaConsumer, tps: list[TopicPartition], timeout: float = 10.0) -> dict[TopicPartition, int]:
    """Each partition's end offset, as the high watermark of a fetch response.

    Assigns `tps` to `consumer` and leaves them positioned at their beginnings. We do not use
    ListOffsets(latest) (`end_offsets`): the dev broker answers it wrongly (the base offset of
    the last batch + 1), while the high watermark in fetch responses is right on every broker.
    """
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    marks: dict[TopicPartition, int] = {}
    while len(marks) < len(tps):
        missing = [tp for tp in tps if tp not in marks]
        await consumer.getmany(*missing, timeout_ms=200, max_records=1)
        for tp in missing:
            mark = consumer.highwater(tp)
            if mark is not None:
                marks[tp] = mark
        if loop.time() > deadline:
            raise KafkaTimeoutError(f"no fetch response for {len(missing)} partitions")
    await consumer.seek_to_beginning(*tps)
    return marks


async def partitions(consumer: AIOKafkaConsumer, topics: Iterable[str]) -> list[TopicPartition]:
    available = await consumer.topics()  # also refreshes the metadata
    return [
        TopicPartition(topic, p)
        for topic in topics if topic in available
        for p in sorted(consumer.partitions_for_topic(topic) or ())
    ]


async def read_tail(settings: Settings, topic: str, per_partition: int, timeout: float = 10.0) -> list[Any]:
    """The last `per_partition` records of each partition of `topic` (no consumer group)."""
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        tps = await partitions(consumer, [topic])
        if not tps:
            return []
        ends = await high_watermarks(consumer, tps, timeout)
        begins = await consumer.beginning_offsets(tps)
        wanted = {}
        for tp in tps:
            start = max(begins[tp], ends[tp] - per_partition)
            if ends[tp] > start:
                consumer.seek(tp, start)
                wanted[tp] = ends[tp]
        out: list[Any] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while wanted and loop.time() < deadline:
            batch = await consumer.getmany(*wanted, timeout_ms=200)
            for tp, records in batch.items():
                out.extend(r for r in records if r.offset < wanted.get(tp, 0))
            for tp in list(wanted):
                if await consumer.position(tp) >= wanted[tp]:
                    del wanted[tp]
        return out
    finally:
        await consumer.stop()
