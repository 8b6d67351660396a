"""The collector's way into Kafka: an acks=all producer that answers 503 rather than wait."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError

from .. import kafka
from ..errors import LeadPulseError
from ..retry import Retry
from ..settings import Settings

log = logging.getLogger("leadpulse.collector")


class BrokerUnavailable(LeadPulseError):
    """Kafka did not acknowledge in time: the client gets 503 and retries."""


class KafkaSink:
    """Connects in the background, so the collector starts (and answers 503) while the broker
    is down, and recovers without a restart."""

    def __init__(self, settings: Settings, timeout: float) -> None:
        self.settings = settings
        self.timeout = timeout
        self.producer: AIOKafkaProducer | None = None
        self.problem = "not connected to Kafka yet"
        self._task: asyncio.Task[None] | None = None
        self._topics_checked = 0.0
        self._retry = Retry((KafkaError, OSError), self._failed, initial=0.2)

    @property
    def ready(self) -> bool:
        return self.producer is not None

    def start(self) -> None:
        self._task = asyncio.create_task(self._connect(), name="collector-kafka-connect")

    def _failed(self, what: str, exc: Exception, delay: float) -> None:
        self.problem = f"Kafka unavailable: {exc}"
        log.warning("cannot reach Kafka at %s (%s); retrying in %.1f s", self.settings.kafka_bootstrap, exc, delay)

    async def _connect(self) -> None:
        async def connect() -> AIOKafkaProducer:
            await kafka.ensure_topics(self.settings, self.settings.input_topics)
            # a fresh producer per try: one whose start failed cannot start again
            return await kafka.started_producer(
                self.settings, self.settings.input_topics, acks="all", linger_ms=2,
                request_timeout_ms=int(self.timeout * 1000),
            )

        self.producer = await self._retry(connect, "connect")
        self._topics_checked = time.monotonic()
        log.info("producing to %s", ", ".join(self.settings.input_topics))

    async def send(self, items: list[tuple[str, bytes, bytes]]) -> None:
        """Produce (topic, key, value) and wait for every acknowledgement, or raise BrokerUnavailable."""
        if self.producer is None:
            raise BrokerUnavailable(self.problem)
        try:
            async with asyncio.timeout(self.timeout):
                futures = [await self.producer.send(topic, value, key=key) for topic, key, value in items]
                await asyncio.gather(*futures)
        except (TimeoutError, KafkaError) as exc:
            if isinstance(exc, (TimeoutError, UnknownTopicOrPartitionError)):
                self._recheck_topics()
            raise BrokerUnavailable(f"Kafka did not acknowledge: {type(exc).__name__} {exc}".strip()) from exc

    def _recheck_topics(self) -> None:
        # A broker that lost its topics (a scratch cluster restarted) would time out forever.
        if time.monotonic() - self._topics_checked < 5:
            return
        self._topics_checked = time.monotonic()

        async def check() -> None:
            with contextlib.suppress(KafkaError, OSError):
                await kafka.ensure_topics(self.settings, self.settings.input_topics)

        asyncio.get_running_loop().create_task(check())

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.producer is not None:
            await self.producer.stop()  # flushes what is in flight
