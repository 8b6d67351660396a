"""A run: the stages in order, each alone on the machine, into one `Report`."""

from __future__ import annotations

import time

from .baseline import stage as baseline
from .ceilings import stage as ceilings
from .context import Context
from .eventset import produce_set
from .latency import stage as latency
from .leadpulse import stage as leadpulse
from .memory import stage as memory
from .processes import stage as processes
from .rebalance import stage as rebalance
from .report import BASELINE, LEADPULSE, Report
from .rss import stage as rss
from .scores import differing
from .shadow import stage as shadow


async def run(ctx: Context, report: Report) -> None:
    from redis.asyncio import Redis

    admin = Redis.from_url(ctx.url(0))
    # Appends stay (everysec, as in `leadpulse dev`), but no AOF rewrite: a rewrite of the
    # bench's earlier stages would fork and take a core from whichever stage runs then.
    await admin.config_set("auto-aof-rewrite-percentage", 0)
    await admin.aclose()

    # the RSS soak (off unless --rss-events): its own topics and Redis db, first on a fresh broker
    if "rss" in ctx.stages and ctx.rss_events > 0:
        await rss(ctx, report)
        if not ctx.stages - {"rss"}:
            return

    data = await produce_set(ctx, report)
    if "ceilings" in ctx.stages:
        await ceilings(ctx, data, report)

    at = int(time.time() * 1000)
    scores: dict[str, dict[str, float]] = {}
    if "baseline" in ctx.stages:
        done = await baseline(ctx, data, report, at)
        if done is not None:
            scores["baseline"] = done
    if "leadpulse" in ctx.stages:
        scores["leadpulse"] = await leadpulse(ctx, data, report, at)

    if "shadow" in ctx.stages:
        await shadow(ctx, data, report)

    base_row, lp_row = report.row(BASELINE), report.row(LEADPULSE)
    if base_row:
        report.checks["baseline_events_done"] = base_row.events
    if lp_row:
        report.checks["leadpulse_events_done"] = lp_row.events
    if "baseline" in scores and "leadpulse" in scores:
        diff = differing(scores["leadpulse"], scores["baseline"])
        report.checks["leads_compared"] = len(scores["leadpulse"])
        report.checks["baseline_vs_leadpulse_leads_differing"] = len(diff)
        report.checks["baseline_vs_leadpulse_examples"] = diff[:5]

    if "processes" in ctx.stages:
        await processes(ctx, data, report, at, scores.get("leadpulse"))
    if "memory" in ctx.stages and "leadpulse" in scores:
        await memory(ctx, report)
    if "rebalance" in ctx.stages:
        await rebalance(ctx, data, report, at, scores.get("leadpulse"))
    if "latency" in ctx.stages:
        await latency(ctx, report)
