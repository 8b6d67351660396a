"""Consumer lag: how many messages of each owned partition lie past the last commit.

The worker and `leadpulse alerts` report it the same way, as a gauge by topic and partition.
A partition's end is the high watermark of the consumer's latest fetch response for it, not a
ListOffsets answer (kafka.high_watermarks says why); so the gauge changes only when the
consumer fetches or commits, and is read after each commit and each empty fetch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import Gauge


class ConsumerLag:
    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge
        #: the next offset to handle, per partition: our last commit, or where our first batch began
        self.done: dict[TopicPartition, int] = {}
        #: each partition's child of the gauge: `labels()` validates and locks on every call, and
        #: the worker sets every owned partition's lag after each batch (40 partitions by default)
        self._children: dict[TopicPartition, Any] = {}

    def started(self, batch: Mapping[TopicPartition, Sequence[Any]]) -> None:
        """A batch arrived: a partition we have not committed yet counts from its first record
        (what came before is committed, or was skipped by the offset reset), so a consumer stuck
        on its first batch shows a lag."""
        for tp, records in batch.items():
            if records:
                self.done.setdefault(tp, records[0].offset)

    def committed(self, offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> None:
        for tp, o in offsets.items():
            self.done[tp] = o.offset

    def observe(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, int]:
        """Sets the gauge for every owned partition whose end and position are known; returns them."""
        lags = {}
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            done = self.done.get(tp)
            if high is None or done is None:
                continue
            lags[tp] = lag = max(0, high - done)
            child = self._children.get(tp)
            if child is None:
                child = self._children[tp] = self.gauge.labels(tp.topic, str(tp.partition))
            child.set(lag)
        return lags

    def forget(self, revoked: Iterable[TopicPartition]) -> None:
        """Partitions handed to another consumer: it reports them now. Their position goes too:
        when one comes back, the offsets it was given up at are stale."""
        for tp in revoked:
            self.done.pop(tp, None)
            self._children.pop(tp, None)
            with contextlib.suppress(KeyError):
                self.gauge.remove(tp.topic, str(tp.partition))
