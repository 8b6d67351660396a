"""Reading what the input topics retain, from their beginnings up to offsets that may move on.

`leadpulse rescore` reads up to the consumer group's committed offsets (what the workers have
applied), round after round as they move; `leadpulse backtest` up to the topics' ends. No
consumer group: reading commits nothing and joins no group.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from . import kafka
from .settings import Settings


class Retained:
    """A reader of `topics` that remembers how far it got per partition."""

    def __init__(self, settings: Settings, topics: Sequence[str], batch: int = 2000) -> None:
        self.settings = settings
        self.topics = list(topics)
        self.batch = batch
        self.consumer = AIOKafkaConsumer(**kafka.client_options(settings), group_id=None, enable_auto_commit=False)
        self.partitions: list[TopicPartition] = []
        #: the next offset to read, per partition
        self.done: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        await kafka.started(self.consumer)
        self.partitions = await kafka.partitions(self.consumer, self.topics)
        if self.partitions:
            self.consumer.assign(self.partitions)
            self.done = dict(await self.consumer.beginning_offsets(self.partitions))

    async def stop(self) -> None:
        await self.consumer.stop()

    async def ends(self) -> dict[TopicPartition, int]:
        """Each partition's end now (kafka.high_watermarks; it leaves the reader's positions alone)."""
        if not self.partitions:
            return {}
        probe = AIOKafkaConsumer(**kafka.client_options(self.settings), group_id=None, enable_auto_commit=False)
        await kafka.started(probe)
        try:
            return await kafka.high_watermarks(probe, self.partitions)
        finally:
            await probe.stop()

    async def committed(self, group_id: str) -> dict[TopicPartition, int]:
        """The group's committed offsets (0 where it committed none): what its workers applied.
        Fetching offsets does not join the group."""
        if not self.partitions:
            return {}
        probe = AIOKafkaConsumer(**kafka.client_options(self.settings), group_id=group_id, enable_auto_commit=False)
        await kafka.started(probe)
        try:
            return {tp: (await probe.committed(tp)) or 0 for tp in self.partitions}
        finally:
            await probe.stop()

    def remaining(self, upto: dict[TopicPartition, int]) -> int:
        return sum(max(0, upto.get(tp, 0) - self.done[tp]) for tp in self.partitions)

    async def read(self, upto: dict[TopicPartition, int]) -> AsyncIterator[list[Any]]:
        """Batches of the records from where the reader stopped up to `upto` (exclusive), in
        offset order per partition."""
        pending = [tp for tp in self.partitions if upto.get(tp, 0) > self.done[tp]]
        for tp in pending:
            self.consumer.seek(tp, self.done[tp])
        while pending:
            fetched = await self.consumer.getmany(*pending, timeout_ms=1000, max_records=self.batch)
            records = []
            for tp, messages in fetched.items():
                kept = [m for m in messages if self.done[tp] <= m.offset < upto[tp]]
                records.extend(kept)
                # records past the bound are dropped (read again next round: read() seeks); gaps
                # (compacted or deleted offsets) are passed, as the position says
                self.done[tp] = max(self.done[tp], min(await self.consumer.position(tp), upto[tp]))
            pending = [tp for tp in pending if self.done[tp] < upto[tp]]
            if records:
                yield records
