"""ConsumerLag (lag.py): the lag gauge per owned partition, set after batches and dropped on revoke."""

from __future__ import annotations

from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry, Gauge

from leadpulse.lag import ConsumerLag


class _Consumer:
    """What ConsumerLag reads of a consumer: its assignment and each partition's high watermark."""

    def __init__(self, highwater: dict[TopicPartition, int]) -> None:
        self.high = highwater

    def assignment(self) -> set[TopicPartition]:
        return set(self.high)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.high.get(tp)


def _gauge() -> tuple[Gauge, CollectorRegistry]:
    registry = CollectorRegistry()
    return Gauge("lag_messages", "lag", ["topic", "partition"], registry=registry), registry


def test_lag_is_set_per_partition_and_a_revoked_partition_leaves_the_gauge_until_it_comes_back() -> None:
    gauge, registry = _gauge()
    a, b = TopicPartition("events.web", 0), TopicPartition("events.web", 1)
    lag = ConsumerLag(gauge)
    consumer = _Consumer({a: 100, b: 50})
    lag.committed({a: OffsetAndMetadata(90, ""), b: OffsetAndMetadata(50, "")})
    assert lag.observe(consumer) == {a: 10, b: 0}  # type: ignore[arg-type]
    assert registry.get_sample_value("lag_messages", {"topic": "events.web", "partition": "0"}) == 10
    consumer.high[a] = 120  # the next fetch saw more: the same partition's sample moves
    lag.observe(consumer)  # type: ignore[arg-type]
    assert registry.get_sample_value("lag_messages", {"topic": "events.web", "partition": "0"}) == 30

    lag.forget([a])
    assert registry.get_sample_value("lag_messages", {"topic": "events.web", "partition": "0"}) is None
    del consumer.high[a]
    lag.observe(consumer)  # type: ignore[arg-type]
    assert registry.get_sample_value("lag_messages", {"topic": "events.web", "partition": "0"}) is None

    # back again: counted from its new position, in the gauge again (not in a child it forgot)
    consumer.high[a] = 200
    lag.committed({a: OffsetAndMetadata(150, "")})
    lag.observe(consumer)  # type: ignore[arg-type]
    assert registry.get_sample_value("lag_messages", {"topic": "events.web", "partition": "0"}) == 50
