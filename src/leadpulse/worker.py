"""The streaming worker: Faust runs the process, our batch consumer runs the hot path.

Faust (faust-streaming) is the application framework: worker lifecycle and signals, the web
server for the HTTP API, and the timer for the decay sweep (sweeper.py). Events are consumed
beside it by an aiokafka consumer that hands whole batches to the pipeline and commits
explicitly, because Faust's per-event stream path tops out near 6–7 k events/s on our machines;
handoffs and dead letters go out through our own producer, which (unlike Faust's) waits out a
broker that is down at start instead of crashing the worker. docs/architecture.md explains the
choices.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
import mode
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata
from faust.app.base import BootStrategy
from redis.exceptions import RedisClusterException, RedisError

from . import api, kafka, models, redisinfo, scripts, shadow
from .board import views as board
from .bounded import RecentIds
from .bounds import Retention, write_refusal
from .errors import StateError
from .following import Following
from .handover import HEARTBEAT_S
from .kafka import SESSION_TIMEOUT_MS
from .lag import ConsumerLag
from .metrics import Metrics
from .model import ScoringModel
from .pipeline import Batch, Processor, Topics
from .rebalance import Partitions
from .retry import Retry, Stopped
from .settings import Settings
from .redisconn import connect
from .state import LeadStore, log_skipped_read
from .sweeper import Sweeper
from .who import Who

log = logging.getLogger("leadpulse.worker")

#: handoff records re-read per partition at start, to skip re-publishing after a crash
HANDOFF_TAIL = 5000
#: an idle worker still looks this often whether a switch or a new model is under way
IDLE_CHECK_S = 0.25
#: seconds between samples of Redis's memory (one INFO per primary; never per event)
REDIS_SAMPLE_INTERVAL = 5.0


class ScoringService(mode.Service):
    """Consume → validate → score in Redis → publish handoffs and dead letters → commit."""

    # stop() waits for the loop to finish its batch and commit before cancelling it.
    wait_for_shutdown = True
    shutdown_timeout = 8.0

    def __init__(self, app: faust.App, settings: Settings, model: ScoringModel, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.redis = connect(
            settings.redis_url.get_secret_value(), settings.redis_cluster, socket_timeout=5,
            socket_connect_timeout=3, health_check_interval=10,
        )
        self.store = LeadStore(self.redis, model, retention=Retention.from_settings(settings))
        self.store.on_skip = self._read_skipped
        self.producer: AIOKafkaProducer | None = None
        self.processor = Processor(
            self.store, self, Topics(settings.handoff_topic, settings.dlq_topic, settings.outcomes_topic), metrics,
            max_event_bytes=settings.max_event_bytes, who=Who.from_settings(settings),
            published=RecentIds(max(50_000, HANDOFF_TAIL * settings.partitions + 10_000)),
        )
        for name, cache in (("published_handoffs", self.processor.published), ("visitor_links", self.store.aliases)):
            metrics.cache(name, cache, cache.capacity)
        self.processor.shadow = shadow.Shadow.configured(settings, self.store, self, metrics)  # LEADPULSE_SHADOW_MODEL
        self.consumer: AIOKafkaConsumer | None = None
        self.lag = ConsumerLag(metrics.lag)
        self.partitions = Partitions("worker", changed=self._update_ready, revoked=self.lag.forget)
        #: the key space and the active model, followed between batches (handover.py, models.py)
        self.following = Following(self.store, self.processor, settings, metrics, self._switch_space)
        self.gate = self.following.gate
        self._uncommitted = 0  # batches applied and not yet committed; the event: none
        self._all_committed = asyncio.Event()
        self._all_committed.set()
        self.prepared = asyncio.Event()
        self.redis_ok = False
        #: "oom" / "readonly" while Redis refuses our writes (state.write_refusal); None otherwise
        self.write_refused: str | None = None
        self.kafka_ok = False
        self.processed = 0
        self.caught_up = False
        # Set when the service stops: a retry waiting out an outage gives up its batch at once.
        self._stopping = asyncio.Event()
        #: every outage is waited out, never a crash loop
        self.retry = Retry((StateError, RedisError, OSError, KafkaError), self._failed, stopping=self._stopping)
        self.sweeper = Sweeper(self.redis, self.processor, self.following, metrics, settings.sweep_interval,
                               may_sweep=lambda: self.prepared.is_set() and self.caught_up,
                               refused=self._write_refused, changed=self._update_ready)

    async def on_start(self) -> None:  # SIGHUP: the model file again (mode has INT, TERM, USR1, USR2)
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.following.on_sighup)

    async def on_stop(self) -> None:
        self._stopping.set()

    # --- start-up ----------------------------------------------------------------------

    def _read_skipped(self, lead_id: str, reason: str, exc: Exception) -> None:
        """A lead a read of many (GET /leads/top) could not read: counted and logged, the rest read."""
        self.metrics.read_skipped.labels(reason).inc()
        log_skipped_read(lead_id, reason, exc)

    def _failed(self, what: str, exc: Exception, delay: float) -> None:
        """A retried operation failed: count it, and say not ready while it lasts."""
        if isinstance(exc, KafkaError):
            self.kafka_ok = False
            self.metrics.kafka_errors.labels(what).inc()
            log.warning("%s: kafka error (%s); retrying in %.1f s", what, exc, delay)
        else:
            self.metrics.redis_errors.labels(what).inc()
            refused = write_refusal(exc)
            if refused:  # reachable, but taking no writes
                self._write_refused(refused)
                log.warning("%s: redis refuses writes (%s: %s); retrying in %.1f s", what, refused, exc, delay)
            else:
                self.redis_ok = False
                log.warning("%s: redis unavailable (%s); retrying in %.1f s", what, exc, delay)
        self._update_ready()

    async def send(self, topic: str, value: bytes, key: bytes | None = None,
                   headers: list[tuple[str, bytes]] | None = None) -> Any:
        """The pipeline's producer: returns the future of the broker's acknowledgement."""
        assert self.producer is not None
        return await self.producer.send(topic, value, key=key, headers=headers)

    def _output_topics(self) -> list[str]:
        s = self.settings
        return [s.handoff_topic, s.dlq_topic, s.outcomes_topic, *shadow.topics(s)]

    async def _start_producer(self) -> None:
        self.producer = await kafka.started_producer(
            self.settings, self._output_topics(), acks="all", linger_ms=1, enable_idempotence=False,
        )

    async def _start_consumer(self) -> None:
        self.consumer = await kafka.started(self._consumer())

    async def _prepare(self) -> None:
        async def redis_ready() -> None:
            await self.redis.ping()
            await scripts.load_all(self.redis)
            self.redis_ok = True

        await self.retry(redis_ready, "connect")
        await self.retry(lambda: models.adopt(self.redis, self.store.keys, self.store.model, self.settings.model),
                         "model")
        await self.retry(lambda: self.gate.check(self._all_committed.wait), "control")
        # the topics first: the producer looks up their leaders as it starts (kafka.started_producer)
        await self.retry(lambda: kafka.ensure_topics(self.settings, [*self.settings.input_topics, *self._output_topics()]), "create_topics")
        await self.retry(self._start_producer, "producer_start")
        await self._read_published()
        log.info("ready to consume %s (%d handoffs already published)",
                 ", ".join(self.settings.input_topics), len(self.processor.published))
        self.prepared.set()

    async def _read_published(self) -> None:
        for topic, published in ((self.settings.handoff_topic, self.processor.published), *shadow.tails(self.processor.shadow)):
            tail = await self.retry(lambda: kafka.read_tail(self.settings, topic, HANDOFF_TAIL), "read_handoffs")  # noqa: B023
            for record in tail:
                for name, value in record.headers or ():
                    if name == "leadpulse.handoff_id":
                        published.add(value.decode())

    def _consumer(self) -> AIOKafkaConsumer:
        s = self.settings
        consumer = AIOKafkaConsumer(
            **kafka.group_options(s, s.group_id),
            auto_offset_reset="earliest",
            max_poll_records=s.batch_max,
            # Kafka's default. Fetched records wait in aiokafka's buffer while the worker is behind,
            # up to this much per partition: 4 MiB on 40 partitions let a backlog hold up to
            # 160 MiB of fetched records in the worker.
            max_partition_fetch_bytes=1024 * 1024,
            # The broker answers a fetch as soon as it holds any event, or after this long:
            # a short wait costs idle fetches, never throughput, and keeps handoffs prompt.
            fetch_max_wait_ms=s.batch_wait_ms,
        )
        consumer.subscribe(list(s.input_topics), listener=self.partitions)
        return consumer

    # --- the loop ----------------------------------------------------------------------

    @mode.Service.task
    async def _run(self) -> None:
        try:
            await self._prepare()
            await self.retry(self._start_consumer, "consumer_start")
            self.kafka_ok = True
            # Known to a rescore from here on: it waits for this worker to hold (handover.py).
            # Every batch passes the gate first, so none is applied before this.
            await self.retry(self.following.register, "heartbeat")
            _tune_gc()
            # Three stages joined by one-batch queues, so that the worker's CPU (parsing batch
            # n+1), Redis (applying batch n) and the broker (acknowledging batch n-1's handoffs)
            # work at the same time. Each stage keeps batch order, so offsets commit in order.
            prepared: asyncio.Queue[_InFlight | None] = asyncio.Queue(maxsize=1)
            applied: asyncio.Queue[_InFlight | None] = asyncio.Queue(maxsize=1)
            stages = [asyncio.ensure_future(c) for c in
                      (self._fetch_stage(prepared), self._apply_stage(prepared, applied), self._commit_stage(applied))]
            try:
                done, _ = await asyncio.wait(stages, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    task.result()  # re-raise what stopped a stage
            finally:
                for task in stages:
                    task.cancel()
                await asyncio.gather(*stages, return_exceptions=True)
        except Stopped:
            log.info("stopping before the batch could be completed; it will be consumed again")
        finally:
            self.set_shutdown()

    async def _fetch_stage(self, out: asyncio.Queue[_InFlight | None]) -> None:
        assert self.consumer is not None
        while not self.should_stop:
            if self.partitions.handing_over:
                await asyncio.sleep(0.05)  # no new batch while partitions are being handed over
                continue
            try:
                batch = await self.consumer.getmany(timeout_ms=200, max_records=self.settings.batch_max)
            except KafkaError as exc:
                self.kafka_ok = False
                self.metrics.kafka_errors.labels("fetch").inc()
                log.warning("fetch failed (%s); retrying", exc)
                await asyncio.sleep(0.5)
                continue
            if batch:
                self.kafka_ok = True
                self.partitions.batch_started()
                self.lag.started(batch)
                records = [r for msgs in batch.values() for r in msgs]
                offsets = {tp: OffsetAndMetadata(msgs[-1].offset + 1, "") for tp, msgs in batch.items()}
                fetched = time.monotonic()
                ready = self.processor.prepare(records)
                await out.put(_InFlight(ready, offsets, fetched, time.monotonic()))
            else:
                self._observe_lag()
                self._update_ready()
        await out.put(None)

    async def _apply_stage(self, inbox: asyncio.Queue[_InFlight | None], out: asyncio.Queue[_InFlight | None]) -> None:
        getter: asyncio.Future[_InFlight | None] | None = None
        try:
            while True:
                # one get() across idle checks: cancelling one that just took a batch loses it
                getter = getter or asyncio.ensure_future(inbox.get())
                done, _ = await asyncio.wait({getter}, timeout=IDLE_CHECK_S)
                if not done:
                    await self._idle_check()
                    continue
                item, getter = getter.result(), None
                if item is None:
                    break
                item.apply_started = time.monotonic()
                await self.retry(lambda: self._apply(item.batch), "process")
                item.applied = time.monotonic()
                self._uncommitted += 1
                self._all_committed.clear()
                self.redis_ok = True
                if item.batch.valid:  # the batch was written: Redis takes writes
                    self._write_refused(None)
                await out.put(item)
        finally:
            if getter is not None:
                getter.cancel()
        await out.put(None)

    async def _apply(self, batch: Batch) -> None:
        # Each attempt passes the gate: a worker waiting out an outage must not apply into a key
        # space a rescore switched away from meanwhile.
        await self.gate.check(self._all_committed.wait)
        await self.processor.apply(batch)

    async def _idle_check(self) -> None:
        with contextlib.suppress(StateError, RedisError, OSError):  # the next batch's check retries
            await self.gate.check(self._all_committed.wait)

    async def _switch_space(self, space: str) -> None:
        self.store.use_space(space)
        if self.prepared.is_set():  # a switch under way: learn what other workers published
            await self._read_published()

    @mode.Service.timer(HEARTBEAT_S)
    async def _heartbeat(self) -> None:
        await self.following.tick(self.prepared.is_set())

    async def _commit_stage(self, inbox: asyncio.Queue[_InFlight | None]) -> None:
        while (item := await inbox.get()) is not None:
            publishing = time.monotonic()
            await self.retry(lambda: self.processor.publish(item.batch), "publish")
            committing = time.monotonic()
            await self._commit(item.offsets)
            committed = time.monotonic()
            self._uncommitted -= 1
            if self._uncommitted == 0:  # what the gate waits for before it holds (handover.py)
                self._all_committed.set()
            self.processed += len(item.batch.records)
            self.metrics.commit_latency.observe(committed - item.consumed)
            self.metrics.batch_timed((item.consumed, item.prepared, item.apply_started, item.applied,
                                      publishing, committing, committed))
            self.partitions.batch_done()
            self._observe_lag()
            self._update_ready()

    async def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        assert self.consumer is not None
        self.lag.committed(await kafka.commit_owned(self.consumer, offsets, self.retry))

    def _observe_lag(self) -> None:
        if self.consumer is None:
            return
        lags = self.lag.observe(self.consumer)
        self.caught_up = bool(self.partitions.assigned) and all(n <= self.settings.batch_max for n in lags.values())
        self.metrics.caught_up.set(1 if self.caught_up else 0)

    @mode.Service.timer(2.0)
    async def _probe(self) -> None:
        """Readiness between batches: an idle consumer does not notice a broker that is gone."""
        if self.consumer is not None:
            try:
                await asyncio.wait_for(self.consumer.topics(), timeout=2.0)
                self.kafka_ok = True
            except (KafkaError, TimeoutError):
                self.kafka_ok = False
        try:
            self.redis_ok = bool(await asyncio.wait_for(self.redis.ping(), timeout=2.0))
        except (RedisError, OSError, TimeoutError):
            self.redis_ok = False
        if self.write_refused and self.redis_ok and self.partitions.in_flight == 0:
            # No batch is retrying to find out (an idle worker): a write of our own does.
            try:
                await asyncio.wait_for(self.redis.set(self.store.keys.probe, b"1", px=10_000), timeout=2.0)
                self._write_refused(None)
            except (RedisError, OSError, TimeoutError):
                pass
        self._update_ready()

    @mode.Service.timer(REDIS_SAMPLE_INTERVAL)
    async def _sample_redis(self) -> None:
        """Redis memory against maxmemory, for the metrics and their alerts."""
        try:
            self.metrics.redis_memory(await asyncio.wait_for(redisinfo.memory(self.redis), timeout=2.0))
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            log.debug("redis memory not sampled: %s", exc)  # an outage is the probe's and the alerts' to tell

    def _write_refused(self, reason: str | None) -> None:
        if reason == self.write_refused:
            return
        if reason is None:
            log.info("redis takes writes again")
        self.write_refused = reason
        for name in ("oom", "readonly"):
            self.metrics.redis_write_refused.labels(name).set(1 if name == reason else 0)
        self._update_ready()

    def _update_ready(self) -> None:
        self.metrics.ready.set(1 if self.ready else 0)

    @property
    def ready(self) -> bool:
        return (self.prepared.is_set() and self.redis_ok and self.write_refused is None and self.kafka_ok
                and bool(self.partitions.assigned) and self.sweeper.not_ready_because is None)

    @property
    def not_ready_because(self) -> str | None:
        """Why /readyz says 503, in words; None when ready."""
        if not self.prepared.is_set():
            return "starting: waiting for Redis and the broker"
        if not self.redis_ok:
            return "redis unreachable"
        if self.write_refused == "oom":
            return "redis refuses writes: OOM (maxmemory reached); scoring waits"
        if self.write_refused == "readonly":
            return "redis refuses writes: READONLY (a replica); scoring waits"
        if not self.kafka_ok:
            return "kafka unreachable"
        if not self.partitions.assigned:
            return "no partitions assigned"
        return self.sweeper.not_ready_because

    async def readiness(self) -> dict[str, Any]:
        """/readyz: Redis is asked now (an idle worker has nothing else telling it Redis went away)."""
        try:
            redis_ok = bool(await asyncio.wait_for(self.redis.ping(), timeout=1.0))
        except Exception:  # noqa: BLE001 - any failure means not ready
            redis_ok = False
        ok = redis_ok and self.ready
        return {
            "ready": ok,
            "reason": None if ok else (self.not_ready_because or "redis unreachable"),
            "redis": redis_ok,
            "redis_write_refused": self.write_refused,  # "oom" | "readonly" | None
            "kafka": self.kafka_ok,
            "partitions_assigned": len(self.partitions.assigned),
            "started": self.prepared.is_set(),
        }

    async def on_shutdown(self) -> None:
        await self.following.leave()
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()
        await self.redis.aclose()
        log.info("stopped after %d events", self.processed)


def _tune_gc() -> None:
    """Every event parses into fresh dicts, so CPython's cyclic collector ran a young-generation
    pass every 700 allocations and, now and then, a full pass over every object the worker holds
    (the model, Faust, aiokafka). Nothing on the hot path makes reference cycles; collect young
    objects less often and keep what exists at start-up out of the full passes."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


@dataclass(slots=True)
class _InFlight:
    batch: Batch
    offsets: dict[TopicPartition, OffsetAndMetadata]
    consumed: float  # monotonic time the batch was fetched
    prepared: float
    apply_started: float = 0.0
    applied: float = 0.0


def create_app(settings: Settings, model: ScoringModel, metrics: Metrics | None = None) -> tuple[faust.App, ScoringService]:
    metrics = metrics or Metrics()
    metrics.model.info({"version": model.version})
    metrics.sweeps_every(settings.sweep_interval)
    for stage in model.stages:
        if stage.handoff:  # from the start: an hour without promotions is 0, not absent (a baseline)
            metrics.handoffs.labels(stage.name, "promoted")
    app = faust.App(
        settings.group_id,
        broker=[f"kafka://{server.strip()}" for server in settings.kafka_bootstrap.split(",")],
        broker_credentials=kafka.faust_credentials(settings),
        broker_session_timeout=SESSION_TIMEOUT_MS / 1000,
        broker_heartbeat_interval=SESSION_TIMEOUT_MS / 3000,
        web_host=settings.http_host,
        web_port=settings.http_port,
        web_enabled=True,
        store="memory://",
        # Faust keeps table data under datadir; we have no tables, so keep it out of the cwd.
        datadir=str(Path(tempfile.gettempdir()) / f"leadpulse-{settings.group_id}"),
        topic_replication_factor=settings.replication_factor,
        autodiscover=False,
        web_application_options={"middlewares": [api.client_errors]},
    )
    # No Faust consumer (our batch consumer owns the group, so the worker never waits for a
    # second group join) and no Faust producer (its start crashes the worker when the broker
    # is down; ours retries). Faust runs the web server, the timer and the service tree.
    app.producer_only = True
    app.boot_strategy = BootStrategy(app, enable_kafka_producer=False)
    service = ScoringService(app, settings, model, metrics, loop=None)
    app.timer(settings.sweep_interval)(service.sweeper.run)
    api.register(app, service.store, settings, metrics, service.readiness)
    board.register(app.web.web_app, service.store, settings)
    return app, service


class FaustWorker(faust.Worker):  # type: ignore[misc]
    def _setup_spinner_handler(self, logger: logging.Logger, level: int) -> None:
        # Faust's start-up spinner lowers the root logger to DEBUG so that it spins on every
        # record; every debug call of aiokafka then built a record only to drop it (~4 % of
        # the worker's CPU under load). The level asked for stays the level.
        self.spinner = None


def run_worker(settings: Settings, model: ScoringModel, *extra: mode.ServiceT) -> None:
    app, service = create_app(settings, model)
    FaustWorker(app, service, *extra, loglevel=settings.log_level, redirect_stdouts=False).execute_from_commandline()
