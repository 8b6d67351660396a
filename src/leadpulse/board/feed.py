"""The board's live stream: the handoff records of every partition, as they are published.

Each worker follows the handoff topic with a consumer of its own — no group, so it takes every
partition and never commits or takes partitions from anyone — and hands each record to the
board pages connected to it (server-sent events). So a board served by any worker shows the
handoffs all workers publish, the stream is the very record sales receives (nothing is
recomputed), and a worker that nobody watches follows nothing: the consumer starts with the
first board request. At start it reads the last few records of each partition, which fill the
live feed of a page just opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from .. import kafka
from ..settings import Settings

log = logging.getLogger("leadpulse.board")

#: records kept for a page just opened, and read back per partition at start
RECENT = 50
#: a subscriber this far behind (a stalled browser) is dropped; its page reconnects and reloads
BACKLOG = 200


class HandoffFeed:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self.following = asyncio.Event()  # set once positioned: what comes next is live
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start following, once (the first board request calls it)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="board-feed")

    async def stop(self) -> None:
        for queue in list(self.subscribers):
            queue.put_nowait(None)  # ends each open stream
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def caught_up(self, timeout: float) -> bool:
        """Wait until the topic's tail is read (at most `timeout` s); whether it is."""
        try:
            await asyncio.wait_for(self.following.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(BACKLOG)
        self.subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        self.subscribers.discard(queue)

    def publish(self, record: dict[str, Any]) -> None:
        self.recent.append(record)
        for queue in list(self.subscribers):
            try:
                queue.put_nowait(record)
            except asyncio.QueueFull:
                self.subscribers.discard(queue)
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait(None)

    async def _run(self) -> None:
        delay = 0.5
        while True:
            consumer = AIOKafkaConsumer(**kafka.client_options(self.settings), group_id=None, enable_auto_commit=False)
            try:
                await kafka.started(consumer)
                await self._follow(consumer)
            except (KafkaError, OSError) as exc:
                log.warning("board feed: %s; following %s again in %.0f s", exc, self.settings.handoff_topic, delay)
            finally:
                await consumer.stop()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        topic = self.settings.handoff_topic
        tps = await kafka.partitions(consumer, [topic])
        while not tps:  # the topic is created by the first handoff's producer or ensure_topics
            await asyncio.sleep(1.0)
            tps = await kafka.partitions(consumer, [topic])
        ends = await kafka.high_watermarks(consumer, tps)
        begins = await consumer.beginning_offsets(tps)
        pending = set()  # partitions whose tail (up to `ends`) is still being read
        for tp in tps:
            start = max(begins[tp], ends[tp] - RECENT)
            consumer.seek(tp, start)
            if start < ends[tp]:
                pending.add(tp)
        tail: list[dict[str, Any]] = []
        while True:
            if not pending and not self.following.is_set():
                self.recent.extend(sorted(tail, key=_crossed))  # the partitions' tails, in time order
                tail = []
                self.following.set()
            batch = await consumer.getmany(timeout_ms=1000)
            fresh: list[dict[str, Any]] = []
            for tp, records in batch.items():
                for r in records:
                    record = _decoded(r.value)
                    if record is not None:
                        (tail if r.offset < ends[tp] else fresh).append(record)
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
            for record in sorted(fresh, key=_crossed):
                self.publish(record)


def _crossed(record: dict[str, Any]) -> str:
    return str(record.get("crossed_at", ""))


def _decoded(value: bytes | None) -> dict[str, Any] | None:
    try:
        record = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None
