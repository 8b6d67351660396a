"""Stage `processes`: `leadpulse worker --processes 2` end to end over the event set, beside the
one-process row (stage `leadpulse`): two worker processes in one consumer group on this host,
both ready (each holding partitions) before the first event is read. Measured from the processes'
own accounts of their work, added: events and CPU summed, the span from the first one's start to
the last one's end; Redis and the broker over that span. Its final scores must equal the
one-process run's."""

from __future__ import annotations

from .children import follow
from .context import DB_PROCESSES, Context
from .eventset import EventSet
from .measure import CpuTrace
from .report import Report, measured
from .scores import differing, final_scores

PROCESSES = 2
NAME = f"LeadPulse worker, {PROCESSES} processes"


async def stage(ctx: Context, data: EventSet, report: Report, at: int, one_process: dict[str, float] | None) -> None:
    """`one_process`: the LeadPulse stage's final scores, if it ran."""
    total = data.total
    await ctx.flush(DB_PROCESSES)
    worker = ctx.worker("processes", ctx.url(DB_PROCESSES), processes=PROCESSES, log_level="warning")
    await worker.wait_ready()
    with CpuTrace(ctx.pids) as trace:
        await follow(worker, worker.processed, total, on_progress=ctx.task(NAME, total))
        work = await worker.work()
    row = measured(NAME, work, trace, f"CPU of the {PROCESSES} worker processes added (`leadpulse worker --processes {PROCESSES}`)")
    report.rows.append(row)
    worker.stop()
    if one_process is not None:
        diff = differing(await final_scores(ctx.url(DB_PROCESSES), data.leads, at), one_process)
        report.checks["processes_vs_one_leads_differing"] = len(diff)
    await ctx.flush(DB_PROCESSES)
