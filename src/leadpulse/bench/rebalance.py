"""Stage `rebalance`: two workers in one consumer group over the event set, the second started
once the first has handled a third of it, so the group rebalances mid-run. Measured: what each
handled, what was replayed after the rebalance, the partitions each was assigned over time, and
whether the final scores equal the one-worker run's (they must)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import click

from .children import Worker
from .context import DB_TWO, Context
from .eventset import EventSet
from .measure import Work
from .report import Report
from .scores import differing, final_scores


async def committed_all(bootstrap: str, group: str, topics: Sequence[str], ends: dict[Any, int]) -> bool:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        for tp, end in ends.items():
            if (await consumer.committed(tp) or 0) < end:
                return False
        return True
    finally:
        await consumer.stop()


async def stage(ctx: Context, data: EventSet, report: Report, at: int, one_worker: dict[str, float] | None) -> None:
    """`one_worker`: the LeadPulse stage's final scores, if it ran."""
    total = data.total
    await ctx.flush(DB_TWO)
    group = f"{ctx.tag}-two"
    shared = {"group_id": group, "handoff_topic": f"{ctx.prefix}two.handoff", "dlq_topic": f"{ctx.prefix}two.dlq"}
    first = ctx.worker("two-a", ctx.url(DB_TWO), **shared)
    second: Worker | None = None
    advance = ctx.task("two workers, rebalance mid-run", total)
    await first.wait_ready()
    t0 = time.perf_counter()
    shown = 0
    second_after = 0
    while True:
        a = await first.processed()
        b = await second.processed() if second else 0
        if a + b > shown:
            advance(min(total, a + b) - min(total, shown))
            shown = a + b
        if second is None and a >= total // 3:
            # Polled: on a fast machine the first may be done before the second starts; the
            # report says when it did, rather than claiming a third.
            second, second_after = ctx.worker("two-b", ctx.url(DB_TWO), **shared), a
        if second is not None and a + b >= total and await committed_all(ctx.bootstrap, group, ctx.topics, data.ends):
            break
        if time.perf_counter() - t0 > 900:
            raise click.ClickException("two workers did not finish within 15 minutes")
        for w in (first, second):
            if w is not None and not w.alive():
                raise click.ClickException(f"{w.log.name} exited:\n{w.tail()}")
        await asyncio.sleep(0.25)
    works = [await first.work(), await second.work() if second else Work()]
    assigned = (first.assignments(), second.assignments() if second else [])
    first.stop()
    if second:
        second.stop()
    two = await final_scores(ctx.url(DB_TWO), data.leads, at)
    busy = [w for w in works if w.events]
    counts = [w.events for w in works]
    report.two_workers = {
        "events": total,
        # from the first batch either received to the last either finished (their own marks)
        "seconds": round(max(w.end for w in busy) - min(w.start for w in busy), 2) if busy else 0.0,
        "second_started_after_events": second_after,
        "processed_by_each": counts, "replayed_after_rebalance": max(0, sum(counts) - total),
        "assignments": list(assigned),
    }
    if one_worker is not None:
        diff = differing(one_worker, two)
        report.two_workers["leads_differing_from_one_worker"] = len(diff)
        report.two_workers["examples"] = diff[:5]
