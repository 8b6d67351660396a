"""The decay sweep: the demotions no event causes, published on the worker's timer.

A lead whose score decays below its stage's floor with no new event is demoted by sweep.lua at
the instant it crossed (docs/architecture.md, Decay-driven demotion). One worker at a time
sweeps (a Redis lock), and only a worker that has caught up with its partitions.

What fails, and what it costs:
- one lead the sweep cannot read (sweep.lua fails on its state, or its reply cannot be read) is
  skipped on its own: counted in `leadpulse_sweep_skipped_leads_total{reason}`, logged with its
  id, left in the due index (so `leadpulse_sweep_overdue_entries` shows it), and every other
  lead of the pass is swept;
- a pass that fails as a whole (Redis, or the broker refusing the demotions) is counted, logged
  and tried again at the next tick. It makes the worker not ready only once FAILURES_NOT_READY
  runs in a row have failed, and only while it keeps sweeping: a run that completes, or the
  worker not sweeping (behind its partitions, or another worker holds the lock), clears it.
  Whether Redis is reachable is the probe's to judge (a PING every 2 s), so one failed pass
  does not flip `/readyz` to 503 and back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiokafka.errors import KafkaError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from .bounds import write_refusal
from .errors import StateError
from .following import Following
from .metrics import Metrics
from .pipeline import Processor

log = logging.getLogger("leadpulse.worker")

#: leads a pass reads (per index shard); a full pass is followed by another at once
PASS_SIZE = 500
#: sweep runs failed in a row after which /readyz says 503 (at the default 5 s interval: ~15 s)
FAILURES_NOT_READY = 3


class Sweeper:
    """The sweep timer's work. `may_sweep`: the worker is prepared and caught up; `refused`: Redis
    refused a write (bounds.write_refusal's reason); `changed`: readiness may have changed."""

    def __init__(self, redis: Redis, processor: Processor, following: Following, metrics: Metrics,
                 interval: float, may_sweep: Callable[[], bool], refused: Callable[[str], None],
                 changed: Callable[[], None]) -> None:
        self.redis = redis
        self.processor = processor
        self.following = following
        self.metrics = metrics
        self.interval = interval
        self._may_sweep = may_sweep
        self._refused = refused
        self._changed = changed
        #: sweep runs failed since the last one that completed, and why the last one failed
        self.failures = 0
        self.last_error = ""

    @property
    def not_ready_because(self) -> str | None:
        if self.failures < FAILURES_NOT_READY:
            return None
        return f"decay sweep failing: {self.failures} runs in a row ({self.last_error})"

    async def run(self, _app: object = None) -> None:
        """Publish demotions caused by decay alone. One worker at a time holds the sweep lock.

        Only a worker that has caught up with its partitions sweeps: while a backlog (a
        backfill, a restart after an outage) is being consumed, a lead's older events may still
        be on their way, and demoting it on the wall clock first would decide ahead of them.
        Events arriving after a due time apply that demotion themselves, at its instant.
        """
        gate = self.following.gate
        if not self._may_sweep() or gate.quiet.locked():
            self._clear()  # not sweeping now, by design (behind, or a switch): no failure is current
            return
        store = self.processor.store
        try:
            lock = self.redis.lock(store.keys.sweep_lock, timeout=max(30.0, 3 * self.interval), blocking=False)
            if not await lock.acquire():
                self._clear()  # another worker sweeps
                return
            try:
                async with gate.quiet:  # never while holding for a switch (handover.py)
                    while await self._pass() >= PASS_SIZE:
                        pass
                    await self.following.reevaluate()
            finally:
                await lock.release()
        except (StateError, RedisError) as exc:
            refused = write_refusal(exc)
            if refused:
                self._refused(refused)
            self.metrics.redis_errors.labels("sweep").inc()
            log.warning("sweep failed: %s", exc)
            self._failed(f"redis: {exc}")
        except KafkaError as exc:
            self.metrics.kafka_errors.labels("sweep").inc()
            log.warning("sweep could not publish: %s", exc)
            self._failed(f"kafka: {exc}")
        else:
            self._clear()

    def _clear(self) -> None:
        if self.failures:
            self.failures = 0
            self._changed()

    def _failed(self, why: str) -> None:
        self.failures += 1
        self.last_error = why
        if self.failures == FAILURES_NOT_READY:
            log.error("the decay sweep failed %d times in a row: not ready until a run completes", self.failures)
        self._changed()

    async def _pass(self) -> int:
        """One pass over up to PASS_SIZE due leads; its metrics say what it found and that it completed."""
        now = int(time.time() * 1000)
        due_at: list[float] = []
        skipped: list[tuple[str, str, Exception]] = []
        try:
            swept = await self.processor.sweep(now, due_at, skipped)
        except BaseException:
            if due_at:  # read, then failed: what it read is still the backlog
                self.metrics.sweep_read(now, due_at)
            raise
        finally:
            for lead, reason, exc in skipped:
                self.metrics.sweep_skipped.labels(reason).inc()
                log.error("sweep skipped lead %r (%s: %s: %s); it stays due, the others were swept",
                          lead, reason, type(exc).__name__, exc)
        self.metrics.sweep_read(now, due_at)
        self.metrics.sweep_success.set(time.time())
        return swept
