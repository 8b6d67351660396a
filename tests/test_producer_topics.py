"""A producer keeps the leaders of every topic it writes to, whatever order it meets them in.

aiokafka (0.14) learns the topics a cluster has when it starts from an all-topics metadata
request, but tracks only the topics it later had to look up: the first send to a topic created
after the start narrows every later refresh to that topic, the others drop out of its metadata,
and their sends wait for a leader that never comes back until request_timeout_ms (40 s) fails
them with NotLeaderForPartitionError. Seen in `leadpulse bench`'s latency run as 40-second
handoffs. Real broker, no mocks.
"""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaProducer, TopicPartition

from leadpulse import kafka
from leadpulse.settings import Settings


async def _narrowed(producer: AIOKafkaProducer, settings: Settings, known: str) -> TopicPartition:
    """Write to `known`, then to a topic created after the producer started; refresh metadata."""
    late = f"{known}-late"
    await (await producer.send(known, b"1"))
    await kafka.ensure_topics(settings, [late])
    await (await producer.send(late, b"2"))
    await producer.client.force_metadata_update()
    return TopicPartition(known, 0)


async def test_aiokafka_alone_forgets_the_topics_it_started_with(broker) -> None:
    # The library behaviour the fix exists for: if this starts failing, aiokafka fixed it and
    # kafka.started_producer's pinning can go.
    settings = Settings(kafka_bootstrap=broker.bootstrap, partitions=1)
    known = f"pt-{uuid.uuid4().hex[:8]}"
    await kafka.ensure_topics(settings, [known])
    producer = await kafka.started(AIOKafkaProducer(**kafka.client_options(settings), acks="all"))
    try:
        tp = await _narrowed(producer, settings, known)
        assert producer.client.cluster.leader_for_partition(tp) is None
    finally:
        await producer.stop()


async def test_a_started_producer_keeps_the_leaders_of_its_topics(broker) -> None:
    settings = Settings(kafka_bootstrap=broker.bootstrap, partitions=1)
    known = f"pt-{uuid.uuid4().hex[:8]}"
    await kafka.ensure_topics(settings, [known])
    producer = await kafka.started_producer(settings, [known], acks="all")
    try:
        tp = await _narrowed(producer, settings, known)
        assert producer.client.cluster.leader_for_partition(tp) is not None
        await (await producer.send(known, b"3"))  # answered, not left to expire
    finally:
        await producer.stop()
