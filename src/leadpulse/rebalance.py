"""The partitions a consumer owns, and handing them over only after their batches committed.

Offsets are committed once a batch is done (scored and published, or delivered), so a partition
handed to another consumer mid-batch would be replayed from its last commit: harmless (every
step is idempotent), but work done twice. On a rebalance the listener therefore stops new
batches (`handing_over`) and waits, up to `drain_timeout`, until none is in flight, while this
consumer still owns their partitions and may commit them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka import ConsumerRebalanceListener, TopicPartition

log = logging.getLogger("leadpulse.rebalance")


def _nothing(*_: object) -> None:
    pass


class Partitions(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, name: str, changed: Callable[[], None] = _nothing,
                 revoked: Callable[[set[TopicPartition]], None] = _nothing, drain_timeout: float = 30.0) -> None:
        self.name = name
        self.changed = changed  # told after every assignment change (readiness)
        self.revoked = revoked  # told of the partitions given up (their metrics)
        self.drain_timeout = drain_timeout
        self.assigned: set[TopicPartition] = set()
        #: a rebalance is under way: the fetch loop starts no new batch
        self.handing_over = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def batch_started(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def batch_done(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.handing_over = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=self.drain_timeout)
        except TimeoutError:
            log.warning("%s: rebalance: the batches in flight did not finish; they will be replayed", self.name)
        self.assigned -= set(revoked)
        self.revoked(set(revoked))
        self.changed()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.handing_over = False
        self.assigned = set(assigned)
        log.info("%s: assigned %d partitions", self.name, len(assigned))
        self.changed()
