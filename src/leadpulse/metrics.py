"""Prometheus metrics. One registry per worker, so tests can run several side by side."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence, Sized

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)
#: a due-index entry is overdue once it has been due this many sweep intervals: a healthy sweep
#: takes it within one, and a busy worker's timer may slip by another
SWEEP_GRACE_INTERVALS = 3
#: the steps of `leadpulse_batch_stage_seconds`, in a batch's order
BATCH_STEPS = ("prepare", "queued", "apply", "applied", "publish", "commit")
#: why a sweep pass or a read of many leads skipped a lead (LeadStore.sweep, LeadStore.read)
SWEEP_SKIP_REASONS = ("script_error", "bad_reply")


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
        # Where a batch's time goes between fetch and commit (worker.py's three stages): the stage
        # that bounds latency is the one whose time grows, and a stage's wait says which is busy.
        self.batch_stage = Histogram(
            "leadpulse_batch_stage_seconds", "Time each batch spends in each step from fetch to commit: "
            "prepare (parse, validate, match), queued (waiting for the apply stage), apply (Redis), "
            "applied (waiting for the commit stage), publish (handoffs and dead letters acknowledged), "
            "commit (offsets).", ["step"], buckets=LATENCY_BUCKETS, registry=r,
        )
        # every step from the start (a dashboard shows 0, not nothing), its child looked up once
        self._batch_steps = [self.batch_stage.labels(step) for step in BATCH_STEPS]
        self.batch_size = Histogram(
            "leadpulse_batch_size_events", "Events per processed batch.",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000), registry=r,
        )
        self.handoffs = Counter(
            "leadpulse_handoffs", "Handoffs published, by stage and kind.", ["stage", "kind"], registry=r
        )
        # The lifecycle (docs/scoring.md §10): CRM outcomes applied, and sales' answer to an SQL.
        self.outcomes = Counter("leadpulse_outcomes", "CRM outcomes applied and published on leads.outcomes, "
                                "by outcome.", ["outcome"], registry=r)
        self.sla_answer = Histogram(
            "leadpulse_sla_answer_seconds", "Time from an SQL's handoff to sales' sql_accepted or sql_rejected "
            "(event time), by outcome.", ["outcome"], registry=r,
            buckets=(900, 3600, 4 * 3600, 8 * 3600, 86400, 2 * 86400, 3 * 86400, 7 * 86400, 14 * 86400, 30 * 86400),
        )
        self.sales_sla = Gauge("leadpulse_sales_sla_seconds", "The model's sales SLA (lifecycle.sla; 0: none): an SQL "
                               "unanswered this long gets an sla_overdue handoff.", registry=r)
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
        self.caught_up = Gauge(
            "leadpulse_caught_up", "1 when every partition this worker owns is within one batch of its end: "
            "only then does it sweep (a backlog may still hold a lead's older events).", registry=r,
        )
        # The decay sweep, which pauses by design while its worker is behind: these tell a paused
        # sweep (caught_up 0) from a broken one (caught up, yet no pass completes or the due index
        # keeps entries long past their time).
        self.sweep_interval = Gauge(
            "leadpulse_sweep_interval_seconds", "Seconds between sweeps (LEADPULSE_SWEEP_INTERVAL).", registry=r)
        self.sweep_success = Gauge(
            "leadpulse_sweep_last_success_timestamp_seconds", "When this worker last completed a sweep pass "
            "(unix seconds; 0: not yet).", registry=r,
        )
        self.sweep_overdue = Gauge(
            "leadpulse_sweep_overdue_entries", "Due-index entries that had been due for more than "
            f"{SWEEP_GRACE_INTERVALS} sweep intervals when this worker's last sweep pass read them "
            "(it reads at most 500 per index shard).", registry=r,
        )
        self.sweep_lag = Gauge(
            "leadpulse_sweep_lag_seconds", "How long the longest-due entry had been due when this worker's "
            "last sweep pass read the due index (0: nothing due).", registry=r,
        )
        self.sweep_skipped = Counter(
            "leadpulse_sweep_skipped_leads", "Leads a sweep pass skipped and left in the due index, by "
            "reason: script_error (sweep.lua failed on the lead, e.g. its state cannot be unpacked) or "
            "bad_reply (its reply could not be read). The pass swept the others.", ["reason"], registry=r,
        )
        # its own family, not a label of the sweep's: the sweep's feeds LeadPulseDemotionsOverdue's runbook
        self.read_skipped = Counter(
            "leadpulse_read_skipped_leads", "Leads a read of many leads (GET /leads/top) skipped, by reason: "
            "script_error (read.lua failed on the lead, e.g. its state cannot be unpacked) or bad_reply. "
            "The others were read; GET /leads/{id} of such a lead answers 500 unreadable_lead.", ["reason"], registry=r,
        )
        self._sweep_interval = 0.0
        self._redis_nodes: set[str] = set()
        self.redis_write_refused = Gauge(
            "leadpulse_redis_write_refused", "1 while Redis refuses the worker's writes, by reason: oom "
            "(maxmemory reached, noeviction) or readonly (a replica). Scoring waits; /readyz says 503.",
            ["reason"], registry=r,
        )
        self.redis_used_memory = Gauge(
            "leadpulse_redis_used_memory_bytes", "Redis INFO used_memory of each primary (node), sampled "
            "every few seconds.", ["node"], registry=r,
        )
        self.redis_maxmemory = Gauge(
            "leadpulse_redis_maxmemory_bytes", "Redis maxmemory of each primary (node): there it refuses "
            "writes (OOM, noeviction) and scoring waits; 0: no limit set.", ["node"], registry=r,
        )
        self.model = Info("leadpulse_model", "The scoring model in use.", registry=r)
        # The shadow model (shadow.py): how often it decides as the live model does, by how much
        # its scores differ, what it costs to run, and that it keeps running.
        self.shadow_decisions = Counter(
            "leadpulse_shadow_decisions", "Stage decisions events caused in the live or the shadow model, by "
            "kind, the stage entered (promoted) or left (demoted), and agreement: agree (both decided it), "
            "live_only, shadow_only.", ["kind", "stage", "agreement"], registry=r,
        )
        self.shadow_score_delta = Histogram(
            "leadpulse_shadow_score_delta", "Shadow score minus live score of the lead at each decision "
            "counted in leadpulse_shadow_decisions_total (the other model's score read at that instant).",
            buckets=(-100, -50, -25, -10, -5, -1, -0.001, 0.001, 1, 5, 10, 25, 50, 100), registry=r,
        )
        # prometheus_client exposes no _sum for a histogram with negative buckets: the sum is here
        self.shadow_score_delta_sum = Gauge(
            "leadpulse_shadow_score_delta_signed_sum", "Sum of shadow minus live score over the decisions in "
            "leadpulse_shadow_score_delta (÷ its _count: the mean difference).", registry=r,
        )
        self.shadow_handoffs = Counter(
            "leadpulse_shadow_handoffs", "Handoffs of the shadow model published on its topic, by stage and kind.",
            ["stage", "kind"], registry=r,
        )
        self.shadow_failures = Counter(
            "leadpulse_shadow_failures", "Shadow work that failed and was given up (the live path never waits "
            "for it), by operation: apply, publish, compare, sweep.", ["op"], registry=r,
        )
        # The process's own account of its work, so that a rate and CPU per event need no outside
        # sampling, however short the run (`leadpulse bench` reads them with leadpulse_events_total).
        self.work = Gauge(
            "leadpulse_work_seconds", "When this process received its first batch (at=start) and last "
            "finished one (at=end): clock=unix is the wall clock, clock=cpu the process's CPU seconds.",
            ["at", "clock"], registry=r,
        )
        # The worker's bounded in-memory caches (bounded.Recent): its RSS rises while they fill and
        # is flat once they are full, so a soak can say when its warm-up ended (docs/performance.md).
        self.cache_entries = Gauge("leadpulse_cache_entries", "Entries in each of the worker's bounded "
                                   "in-memory caches (read when scraped).", ["cache"], registry=r)
        self.cache_capacity = Gauge("leadpulse_cache_capacity", "The most entries each of the worker's "
                                    "bounded in-memory caches keeps.", ["cache"], registry=r)
        self._work_start: tuple[Gauge, Gauge] | None = (
            self.work.labels("start", "unix"), self.work.labels("start", "cpu"))
        self._work_end = (self.work.labels("end", "unix"), self.work.labels("end", "cpu"))
        # Series that exist from the start, so that rate() and increase() see the first error.
        for op in ("connect", "process", "commit", "sweep"):
            self.redis_errors.labels(op)
        for reason in ("oom", "readonly"):
            self.redis_write_refused.labels(reason).set(0)
        for reason in SWEEP_SKIP_REASONS:
            self.sweep_skipped.labels(reason)
            self.read_skipped.labels(reason)
        for op in ("producer_start", "consumer_start", "create_topics", "process", "commit", "fetch", "sweep"):
            self.kafka_errors.labels(op)

    def cache(self, name: str, cache: Sized, capacity: int) -> None:
        """Report a bounded cache's size; it is counted at each scrape, never on the hot path."""
        self.cache_entries.labels(name).set_function(lambda: len(cache))
        self.cache_capacity.labels(name).set(capacity)

    def sweeps_every(self, seconds: float) -> None:
        self._sweep_interval = seconds
        self.sweep_interval.set(seconds)

    def sweep_read(self, now_ms: int, due_at: Sequence[float]) -> None:
        """What a sweep pass found in the due index (the due times, in ms, it read by `now_ms`):
        counted from the read the pass makes anyway, so that the cost stays one per interval even
        on Redis Cluster, whose due index has 16384 shards."""
        overdue_before = now_ms - SWEEP_GRACE_INTERVALS * self._sweep_interval * 1000
        self.sweep_overdue.set(sum(1 for at in due_at if at < overdue_before))
        self.sweep_lag.set(max(0.0, now_ms - min(due_at)) / 1000 if due_at else 0.0)

    def redis_memory(self, nodes: Mapping[str, tuple[int, int]]) -> None:
        """(used, maxmemory) by node, from one sample; a node gone since (failover, resharding)
        stops being reported."""
        for node, (used, limit) in nodes.items():
            self.redis_used_memory.labels(node).set(used)
            self.redis_maxmemory.labels(node).set(limit)
        for gone in self._redis_nodes - nodes.keys():
            self.redis_used_memory.remove(gone)
            self.redis_maxmemory.remove(gone)
        self._redis_nodes = set(nodes)

    def batch_received(self) -> None:
        """The first batch opens the work's span: from before its first event is handled, so that
        even a run of one batch has a duration and a CPU cost."""
        if self._work_start is not None:
            wall, cpu = self._work_start
            wall.set(time.time())
            cpu.set(time.process_time())
            self._work_start = None

    def batch_timed(self, marks: Sequence[float]) -> None:
        """A committed batch's monotonic times: fetched, then the end of each of BATCH_STEPS."""
        for child, start, end in zip(self._batch_steps, marks, marks[1:]):
            child.observe(end - start)

    def batch_done(self) -> None:
        """Marks the end of the span with the batch's events counted (same scrape, same batch)."""
        wall, cpu = self._work_end
        wall.set(time.time())
        cpu.set(time.process_time())
