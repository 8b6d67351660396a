"""Prometheus metrics. One registry per worker, so tests can run several side by side."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.events = Counter(
            "leadpulse_events", "Events consumed, by source, type and outcome "
            "(scored, duplicate, anonymous, erased, invalid).", ["source", "type", "outcome"], registry=r,
        )
        self.event_latency = Histogram(
            "leadpulse_event_latency_seconds", "From an event's occurred_at to its score being stored.",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.commit_latency = Histogram(
            "leadpulse_commit_latency_seconds", "From a batch being consumed to its offsets being committed.",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "leadpulse_batch_size_events", "Events per processed batch.",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000), registry=r,
        )
        self.handoffs = Counter(
            "leadpulse_handoffs", "Handoffs published, by stage and kind.", ["stage", "kind"], registry=r
        )
        self.dlq = Counter("leadpulse_dlq", "Events sent to the dead-letter topic, by reason.", ["reason"], registry=r)
        self.redis_seconds = Histogram(
            "leadpulse_redis_call_seconds", "Redis round trips, by operation.", ["op"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1), registry=r,
        )
        self.redis_errors = Counter("leadpulse_redis_errors", "Failed Redis operations.", ["op"], registry=r)
        self.kafka_errors = Counter("leadpulse_kafka_errors", "Failed Kafka operations.", ["op"], registry=r)
        self.lag = Gauge(
            "leadpulse_consumer_lag_messages", "Messages behind the partition's end.", ["topic", "partition"], registry=r
        )
        self.ready = Gauge("leadpulse_ready", "1 when the broker and Redis are reachable and partitions assigned.", registry=r)
        self.redis_write_refused = Gauge(
            "leadpulse_redis_write_refused", "1 while Redis refuses the worker's writes, by reason: oom "
            "(maxmemory reached, noeviction) or readonly (a replica). Scoring waits; /readyz says 503.",
            ["reason"], registry=r,
        )
        self.model = Info("leadpulse_model", "The scoring model in use.", registry=r)
        # The process's own account of its work, so that a rate and CPU per event need no outside
        # sampling, however short the run (`leadpulse bench` reads them with leadpulse_events_total).
        self.work = Gauge(
            "leadpulse_work_seconds", "When this process received its first batch (at=start) and last "
            "finished one (at=end): clock=unix is the wall clock, clock=cpu the process's CPU seconds.",
            ["at", "clock"], registry=r,
        )
        self._work_start: tuple[Gauge, Gauge] | None = (
            self.work.labels("start", "unix"), self.work.labels("start", "cpu"))
        self._work_end = (self.work.labels("end", "unix"), self.work.labels("end", "cpu"))
        # Series that exist from the start, so that rate() and increase() see the first error.
        for op in ("connect", "process", "commit", "sweep"):
            self.redis_errors.labels(op)
        for reason in ("oom", "readonly"):
            self.redis_write_refused.labels(reason).set(0)
        for op in ("producer_start", "consumer_start", "create_topics", "process", "commit", "fetch", "sweep"):
            self.kafka_errors.labels(op)

    def batch_received(self) -> None:
        """The first batch opens the work's span: from before its first event is handled, so that
        even a run of one batch has a duration and a CPU cost."""
        if self._work_start is not None:
            wall, cpu = self._work_start
            wall.set(time.time())
            cpu.set(time.process_time())
            self._work_start = None

    def batch_done(self) -> None:
        """Marks the end of the span with the batch's events counted (same scrape, same batch)."""
        wall, cpu = self._work_end
        wall.set(time.time())
        cpu.set(time.process_time())
