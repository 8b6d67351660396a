"""`leadpulse alerts`: tell sales, in Slack and over a signed webhook, when a lead is promoted.

Consumes `leads.handoff` in its own group (`<group>-alerts`) and delivers each handoff to every
configured destination. A delivery that fails with 5xx, 429, 408 or a timeout is retried with
exponential backoff and jitter (Retry-After is honoured); after `alerts_max_attempts` tries, or at
once on another 4xx, the handoff goes to the alert dead-letter topic with the reason in headers.
Offsets are committed only once every handoff of the batch is delivered or dead-lettered, so a
crash re-announces rather than loses; receivers dedupe on `Idempotency-Key` = handoff_id, the
same id a redelivered handoff carries. No record stops the consumer: one it cannot read or render
(schema-valid but odd, such as a `crossed_at` in year 0) is dead-lettered with reason
`invalid_handoff` or `internal`, and the rest go on. What is sent, and one try of it, is
destinations.py; docs/integrations.md documents the payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import fastjsonschema
import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .. import kafka
from ..bounded import RecentIds
from ..events import load_schema
from ..lag import ConsumerLag
from ..probes import add_probes
from ..rebalance import Partitions
from ..retry import Retry, Stopped, backoff_delay
from ..settings import Settings
from .config import AlertSettings, routed
from .destinations import Destination, destinations
from .routing import LIFECYCLE_KINDS, REASONS, route

QUIET_KINDS = frozenset({"demoted", *LIFECYCLE_KINDS})

log = logging.getLogger("leadpulse.alerts")

_validate_handoff = fastjsonschema.compile(load_schema("handoff.schema.json"))

#: crossing → delivered spans the worker (under a second), retries (up to tens of minutes) and a
#: backlog after an outage (up to alerts_max_age, a day by default)
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600, 14400, 86400)


class AlertMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.deliveries = Counter(
            "leadpulse_alert_deliveries", "Delivery attempts and their end, by destination and outcome "
            "(ok, retry, failed, dead_letter).", ["destination", "outcome"], registry=r)
        self.handoffs = Counter(
            "leadpulse_alert_handoffs", "Handoffs consumed, by kind and what was done (announced, skipped, "
            "stale, duplicate, unrouted, suppressed, invalid, internal).", ["kind", "outcome"], registry=r)
        self.suppressed = Counter(
            "leadpulse_alert_suppressed", "Alerts not sent because of who the lead is, by destination and reason "
            "(customer, cooldown, unsubscribed, spam_reported).", ["destination", "reason"], registry=r)
        self.seconds = Histogram(
            "leadpulse_alert_delivery_seconds", "One delivery attempt, by destination.", ["destination"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.latency = Histogram(
            "leadpulse_alert_latency_seconds", "From a handoff's crossed_at to its delivery acknowledged (2xx), "
            "by destination: how late sales hears of it.", ["destination"], buckets=LATENCY_BUCKETS, registry=r)
        self.lag = Gauge(
            "leadpulse_alert_consumer_lag_messages", "Handoffs of the partition past the alerts group's last "
            "commit: neither delivered nor dead-lettered yet.", ["topic", "partition"], registry=r)
        self.ready = Gauge("leadpulse_alerts_ready", "1 when consuming leads.handoff with partitions assigned.",
                           registry=r)
        self.kafka_errors = Counter("leadpulse_alert_kafka_errors", "Failed Kafka operations (each is retried), "
                                    "by operation.", ["op"], registry=r)
        for op in ("create_topics", "producer_start", "consumer_start", "fetch", "commit", "dead_letter"):
            self.kafka_errors.labels(op)  # from the start, so that rate() sees the first error


async def _all(*aws: Awaitable[Any]) -> None:
    """Run side by side and let every one finish (a stop ends them all promptly), then raise
    the first failure: plain gather would leave the others running unobserved."""
    for result in await asyncio.gather(*aws, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result


class AlertService:
    """Consume handoffs → deliver to each destination (retry, dead-letter) → commit."""

    def __init__(self, settings: Settings, config: AlertSettings, metrics: AlertMetrics | None = None,
                 rng: random.Random | None = None) -> None:
        self.settings = settings
        self.config = config
        self.metrics = metrics or AlertMetrics()
        self.rng = rng or random.Random()
        self.destinations = destinations(config)
        self.routes = routed(config)  # the destinations' filters, in order
        for name in self.destinations:  # from the start, so that rate() sees the first
            for reason in REASONS:
                self.metrics.suppressed.labels(name, reason)
        self.group_id = f"{settings.group_id}-alerts"
        #: (destination, handoff_id) delivered by this process: a handoff the worker published twice,
        #: or a batch replayed after a rebalance, is not announced again
        self.delivered: RecentIds[tuple[str, str]] = RecentIds(100_000)
        self.lag = ConsumerLag(self.metrics.lag)
        self.partitions = Partitions("alerts", changed=self._update_ready, revoked=self.lag.forget)
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.http: aiohttp.ClientSession | None = None
        self._stopping = asyncio.Event()
        self.retry = Retry((KafkaError, OSError), self._failed, stopping=self._stopping, initial=0.2)
        #: set when the consuming loop died of an unexpected error: the process should exit
        self.crashed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def ready(self) -> bool:
        return self.consumer is not None and bool(self.partitions.assigned)

    def _update_ready(self) -> None:
        self.metrics.ready.set(1 if self.ready else 0)

    async def readiness(self) -> dict[str, Any]:
        return {"ready": self.ready, "partitions_assigned": len(self.partitions.assigned)}

    # -- lifecycle --

    async def start(self) -> None:
        self.http = aiohttp.ClientSession()
        app = web.Application()
        add_probes(app.router, self.readiness, self.metrics.registry)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.config.alerts_host, self.config.alerts_port).start()
        self.port = int(self._runner.addresses[0][1])
        self._task = asyncio.create_task(self._run(), name="alerts")
        log.info("alerts: %s; metrics on http://%s:%d/metrics",
                 ", ".join(f"{d.name} ({d.type})" for d in self.destinations.values()), self.config.alerts_host, self.port)

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._runner is not None:
            await self._runner.cleanup()
        if self.http is not None:
            await self.http.close()

    def _failed(self, what: str, exc: Exception, delay: float) -> None:
        self.metrics.kafka_errors.labels(what).inc()
        log.warning("%s failed (%s); retrying in %.1f s", what, exc, delay)

    async def _connect(self) -> None:
        s = self.settings
        await self.retry(lambda: kafka.ensure_topics(s, [s.handoff_topic, self.config.alerts_dlq_topic]),
                         "create_topics")
        # A fresh client per try: an aiokafka client whose start failed cannot start again.
        self.producer = await self.retry(
            lambda: kafka.started_producer(s, [self.config.alerts_dlq_topic], acks="all"), "producer_start")
        self.consumer = await self.retry(lambda: kafka.started(self._consumer()), "consumer_start")
        self._update_ready()

    def _consumer(self) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            **kafka.group_options(self.settings, self.group_id),
            auto_offset_reset=self.config.alerts_start_from, max_poll_records=100,
            # A batch may wait out retries (Retry-After up to alerts_retry_after_max per try);
            # past this interval the group would move on and the batch be replayed elsewhere.
            max_poll_interval_ms=3_600_000,
        )
        consumer.subscribe([self.settings.handoff_topic], listener=self.partitions)
        return consumer

    async def _run(self) -> None:
        try:
            await self._connect()
            assert self.consumer is not None
            while not self._stopping.is_set():
                if self.partitions.handing_over:
                    await self.retry.sleep(0.05)  # no new batch while partitions are being handed over
                    continue
                try:
                    batch = await self.consumer.getmany(timeout_ms=200)
                except KafkaError as exc:
                    self.metrics.kafka_errors.labels("fetch").inc()
                    log.warning("fetch failed (%s); retrying", exc)
                    await self.retry.sleep(0.5)
                    continue
                self._update_ready()
                if batch:
                    self.partitions.batch_started()
                    self.lag.started(batch)
                    self.lag.observe(self.consumer)  # a batch that hangs in retries shows as lag
                    try:
                        await self._handle(batch)
                    finally:
                        self.partitions.batch_done()
                self.lag.observe(self.consumer)
        except Stopped:
            log.info("stopping; the batch in progress will be consumed again")
        except Exception:
            log.exception("alerts stopped consuming; the uncommitted batch will be consumed again")
            self.crashed.set()
        finally:
            self.metrics.ready.set(0)
            if self.consumer is not None:
                await self.consumer.stop()
            if self.producer is not None:
                await self.producer.stop()

    async def _handle(self, batch: dict[TopicPartition, list[Any]]) -> None:
        # One lead's handoffs in order (mql before sql); different leads side by side.
        by_lead: dict[bytes | None, list[Any]] = {}
        for records in batch.values():
            for record in records:
                by_lead.setdefault(record.key, []).append(record)

        async def in_order(records: list[Any]) -> None:
            for record in records:
                await self._announce(record)

        await _all(*(in_order(rs) for rs in by_lead.values()))
        await self._commit({tp: OffsetAndMetadata(rs[-1].offset + 1, "") for tp, rs in batch.items()})

    async def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        assert self.consumer is not None
        self.lag.committed(await kafka.commit_owned(self.consumer, offsets, self.retry))

    # -- one handoff --

    async def _announce(self, record: Any) -> None:
        try:
            handoff = orjson.loads(record.value)
            _validate_handoff(handoff)
        except (orjson.JSONDecodeError, fastjsonschema.JsonSchemaException, TypeError) as exc:
            self.metrics.handoffs.labels("unknown", "invalid").inc()
            await self._dead_letter(record, "-", "invalid_handoff", str(exc), 0)
            return
        try:
            crossed = datetime.fromisoformat(handoff["crossed_at"]).timestamp()
            pending = self._pending(handoff, crossed)
        except Exception as exc:  # noqa: BLE001 - schema-valid, yet unreadable here (crossed_at in year 0…)
            self.metrics.handoffs.labels("unknown", "internal").inc()
            await self._dead_letter(record, "-", "internal", f"{type(exc).__name__}: {exc}", 0)
            return
        if pending:
            await _all(*(self._deliver(d, handoff, record, crossed) for d in pending))

    def _pending(self, handoff: dict[str, Any], crossed: float) -> list[Destination]:
        """The destinations still to hear of a handoff (none when it is stale, goes nowhere or is
        suppressed everywhere); `crossed` is its crossed_at in unix seconds. Routing and
        suppression: routing.py."""
        kind = handoff["kind"]
        max_age = self.config.alerts_max_age
        if max_age and time.time() - crossed > max_age:
            self.metrics.handoffs.labels(kind, "stale").inc()
            log.info("skipping handoff %s: crossed %.0f s ago", handoff["handoff_id"], time.time() - crossed)
            return []
        where = route(handoff, self.routes, self.config.owners, self.config.owner_field)
        for name, reason in where.suppressed:
            self.metrics.suppressed.labels(name, reason).inc()
        if where.suppressed:
            log.info("handoff %s (%s, lead %r): no alert to %s: %s", handoff["handoff_id"], kind, handoff["lead_id"],
                     ", ".join(n for n, _ in where.suppressed), where.suppressed[0][1])
        if not where.deliver:
            # skipped: the kinds announced only on request (demotions, CRM moves); unrouted: others
            outcome = "suppressed" if where.suppressed else "skipped" if kind in QUIET_KINDS else "unrouted"
            self.metrics.handoffs.labels(kind, outcome).inc()
            return []
        pending = [self.destinations[n] for n in where.deliver if (n, handoff["handoff_id"]) not in self.delivered]
        self.metrics.handoffs.labels(kind, "announced" if pending else "duplicate").inc()
        return pending

    async def _deliver(self, dest: Destination, handoff: dict[str, Any], record: Any, crossed: float) -> None:
        assert self.http is not None
        cfg = self.config
        for attempt in range(1, cfg.alerts_max_attempts + 1):
            started = time.monotonic()
            result = await dest.send(self.http, handoff, record.value, attempt)
            self.metrics.seconds.labels(dest.name).observe(time.monotonic() - started)
            if result.ok:
                self.metrics.deliveries.labels(dest.name, "ok").inc()
                self.metrics.latency.labels(dest.name).observe(max(0.0, time.time() - crossed))
                self.delivered.add((dest.name, handoff["handoff_id"]))
                return
            last = attempt == cfg.alerts_max_attempts or not result.retriable
            self.metrics.deliveries.labels(dest.name, "failed" if last else "retry").inc()
            log.warning("%s: handoff %s try %d/%d failed: %s %s", dest.name, handoff["handoff_id"], attempt,
                        cfg.alerts_max_attempts, result.reason, result.detail[:200])
            if last:
                break
            delay = backoff_delay(attempt, cfg.alerts_backoff, cfg.alerts_backoff_max, self.rng)
            if result.retry_after is not None:
                delay = max(delay, min(result.retry_after, cfg.alerts_retry_after_max))
            await self.retry.sleep(delay)
        await self._dead_letter(record, dest.name, result.reason, result.detail, attempt)

    async def _dead_letter(self, record: Any, destination: str, reason: str, detail: str, attempts: int) -> None:
        """The handoff unchanged (replayable) with why it was not delivered in headers."""
        headers = [
            ("leadpulse.alert.destination", destination.encode()),
            ("leadpulse.alert.reason", reason.encode()),
            ("leadpulse.alert.message", detail.encode("utf-8", "backslashreplace")[:2048]),
            ("leadpulse.alert.attempts", str(attempts).encode()),
            ("leadpulse.alert.topic", record.topic.encode()),
            ("leadpulse.alert.partition", str(record.partition).encode()),
            ("leadpulse.alert.offset", str(record.offset).encode()),
            ("leadpulse.alert.time", datetime.now(UTC).isoformat(timespec="milliseconds").encode()),
        ]

        async def send() -> None:
            assert self.producer is not None
            await (await self.producer.send(self.config.alerts_dlq_topic, record.value, key=record.key,
                                            headers=headers))

        # Never commit past an alert that is neither delivered nor dead-lettered.
        await self.retry(send, "dead_letter")
        self.metrics.deliveries.labels(destination, "dead_letter").inc()
        log.error("%s: handoff at %s:%d:%d dead-lettered to %s (%s)", destination, record.topic, record.partition,
                  record.offset, self.config.alerts_dlq_topic, reason)
