"""Stage `leadpulse`: `leadpulse worker` end to end over the event set (consume → validate →
score → Redis → handoffs → commit), measured from the worker's own account of its work
(`leadpulse_work_seconds`), and its RSS: peak, and at 10 %, 50 % and 100 % of the events."""

from __future__ import annotations

from .children import Sample, follow
from .context import DB_LEADPULSE, Context
from .eventset import EventSet
from .measure import CpuTrace, memory
from .report import LEADPULSE, Report, measured
from .scores import final_scores


async def stage(ctx: Context, data: EventSet, report: Report, at: int) -> dict[str, float]:
    """The worker's row and memory; its leads' final scores (its data stays for stage `memory`)."""
    total = data.total
    await ctx.flush(DB_LEADPULSE)
    with CpuTrace(ctx.pids) as trace:
        worker = ctx.worker("leadpulse", ctx.url(DB_LEADPULSE), log_level="warning")
        await worker.wait_ready()
        samples = await follow(worker, worker.processed, total, on_progress=ctx.task(LEADPULSE, total))
        work = await worker.work()
    report.rows.append(measured(LEADPULSE, work, trace, "worker CPU"))
    rss, peak = memory(worker.pid)
    report.worker_memory = {
        "peak_rss_mib": mib(peak),
        "rss_at_10pct_mib": mib(rss_at(samples, 0.1, total)),
        "rss_at_50pct_mib": mib(rss_at(samples, 0.5, total)),
        "rss_at_end_mib": mib(rss),
        "events": total,
    }
    worker.stop()
    return await final_scores(ctx.url(DB_LEADPULSE), data.leads, at)


def rss_at(samples: list[Sample], share: float, total: int) -> int | None:
    """RSS from the first poll in [share, share + 10 %) of the events, if one fell there: a run
    faster than the polls has none, and a later sample must not stand in for it."""
    for s in samples:
        if share * total <= s.count < (share + 0.1) * total:
            return s.rss
    return None


def mib(n: int | None) -> float | None:
    return round(n / 2**20, 1) if n is not None else None
