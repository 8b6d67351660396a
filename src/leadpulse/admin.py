"""Operator actions: rebuild Redis from the topics' retention, and forget a lead (erasure)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import erasure, handover, scripts, spaces
from .bounds import Retention
from .errors import ConfigError, StateError
from .handover import Switch, read_control
from .keys import Keys
from .metrics import Metrics
from .model import ScoringModel
from .pipeline import Batch, Processor, Topics
from .retained import Retained
from .settings import Settings
from .redisconn import connect
from .state import SCORED, LeadStore

log = logging.getLogger("leadpulse.rescore")


@dataclass
class RescoreResult:
    events: int = 0
    scored: int = 0
    duplicates: int = 0
    invalid: int = 0
    transitions: int = 0
    #: records skipped, by dead-letter reason (`internal`: one that failed while being applied)
    skipped: Counter[str] = field(default_factory=Counter)
    #: the key space rebuilt and switched to, and the one it replaced
    space: str = ""
    previous: str = ""
    tombstones: int = 0
    #: leads and visitors of which no event was retained, carried over as they were
    carried: int = 0
    #: events applied while the workers were held, how many workers, and for how long (ms)
    tail: int = 0
    workers: int = 0
    held_ms: float = 0.0
    #: keys of the old space deleted (None: kept, a worker did not confirm the switch)
    deleted: int | None = None


class _NoProducer:
    """Rescoring publishes nothing: every handoff it re-derives was published the first time,
    under the same deterministic id."""

    async def send(self, *args: object, **kwargs: object) -> object:
        raise AssertionError("rescore never publishes")


Phase = Callable[[str], Awaitable[None]]
#: catch-up rounds before the pause: each applies what the workers committed meanwhile
ROUNDS = 5


async def rescore(
    settings: Settings, model: ScoringModel, *, batch: int = 2000,
    on_progress: Callable[[int, int], None] | None = None, on_phase: Phase | None = None,
    carry: bool = True, hold_timeout: float = 60.0,
) -> RescoreResult:
    """Rebuild every lead from the events the input topics retain, into a fresh key space, and
    switch every process over to it (handover.py): idempotent whatever the retention and the
    dedup window (each retained event is applied once, into empty state), and safe while
    workers run (they serve the old state until the switch, which loses and doubles nothing).

    Only what the consumer group has committed is rebuilt: later events are the workers', who
    apply them into the new space after the switch. Tombstones carry over; leads and visitors
    none of whose events are retained are carried over as they are (`carry`), or dropped.
    No record stops it: one that is invalid, or fails while being applied, is skipped and
    counted by reason (the worker dead-lettered it when it first came).
    """
    redis = connect(settings.redis_url.get_secret_value(), settings.redis_cluster)
    root = Keys(cluster=settings.redis_cluster)
    reader = Retained(settings, list(settings.input_topics), batch)
    result = RescoreResult()
    try:
        await scripts.load_all(redis)
        control = await read_control(redis, root)
        if control.switch_id is not None:
            raise ConfigError(f"a rescore is already under way (to {control.to}); a rescore that died is "
                              f"forgotten {handover.LEASE_MS // 1000} s after it stopped")
        await spaces.sweep_leftovers(redis, root, keep={control.space})
        old = root.in_space(control.space)
        new = root.in_space(root.new_space(await redis.incr(root.space_seq)))
        result.previous, result.space = old.space, new.space
        store = LeadStore(redis, model, new, Retention.from_settings(settings))
        processor = Processor(store, _NoProducer(), Topics(settings.handoff_topic, settings.dlq_topic), Metrics())

        async def apply(upto: dict[Any, int], total: int) -> int:
            done = 0
            async for records in reader.read(upto):
                prepared = processor.prepare(records)
                await processor.apply(prepared)  # splits a batch Redis refuses, like the worker
                _count(result, records, prepared)
                done += len(records)
                if on_progress:
                    on_progress(result.events, total)
            return done

        async def phase(name: str) -> None:
            if on_phase:
                await on_phase(name)

        switch = Switch(redis, root, new.space)
        await switch.announce()
        flipped = False
        try:
            async with switch.leased():
                await spaces.copy_rules(redis, old, new)
                result.tombstones = await spaces.copy_tombstones(redis, old, new)
                await reader.start()
                target = await reader.committed(settings.group_id)
                total = reader.remaining(target)
                for _ in range(ROUNDS):
                    await apply(target, total)
                    target = await reader.committed(settings.group_id)
                    total = result.events + reader.remaining(target)
                    if reader.remaining(target) <= batch:
                        break
                await phase("rebuilt")
                candidates = await spaces.unretained(redis, old, new) if carry else []
                await switch.pause()
                held_at = time.monotonic()
                result.workers = await switch.wait_for("held", hold_timeout)
                await phase("held")
                target = await reader.committed(settings.group_id)  # stands still: everyone holds
                result.tail = await apply(target, result.events + reader.remaining(target))
                if candidates:
                    still = await spaces.unretained(redis, old, new, among=candidates)
                    await spaces.carry_over(redis, old, new, still)
                    result.carried = len(still)
                await switch.flip(old.space)
                flipped = True
                result.held_ms = (time.monotonic() - held_at) * 1000
                await phase("switched")
                try:
                    await switch.wait_for("switched", hold_timeout)
                except StateError as exc:  # the new space is the truth; the old one waits
                    log.warning("rescore: %s; the old space %s is deleted by the next rescore", exc, old.space)
                    return result
        except BaseException:
            if not flipped:  # the workers go on in the old space
                await switch.finish()
                await spaces.delete(redis, new)
                await redis.srem(root.spaces, new.space)
            raise
        result.deleted = await spaces.delete(redis, old)
        await redis.srem(root.spaces, old.space)
        await switch.finish()
        return result
    finally:
        await reader.stop()
        await redis.aclose()


def _count(result: RescoreResult, records: Sequence[Any], prepared: Batch) -> None:
    outcomes = prepared.result.outcomes if prepared.result else []
    result.events += len(records)
    result.invalid += len(prepared.invalid)
    result.skipped.update(error.reason for _, error in prepared.invalid)
    result.scored += sum(1 for o in outcomes if o == SCORED)
    result.duplicates += sum(1 for o in outcomes if o != SCORED)
    result.transitions += len(prepared.result.transitions) if prepared.result else 0


async def forget(store: LeadStore, lead_id: str) -> bool:
    """Erase a lead (erasure.erase): its data and its visitors' links go, a tombstone stays
    so that its events (replayed, rescored, merged) cannot bring it back. True if it existed.
    What stays in Kafka: docs/operations.md, Erasure."""
    return await erasure.erase(store, lead_id)
