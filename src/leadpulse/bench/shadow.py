"""Stage `shadow`: the `leadpulse` stage again with a shadow model (LEADPULSE_SHADOW_MODEL, the
default model with its MQL bar at 45 instead of 60), on a Redis database of its own: what
scoring every event a second time costs (its row beside the worker's), and how often the two
models agreed (the worker's `leadpulse_shadow_*` metrics at the end)."""

from __future__ import annotations

from importlib.resources import files

import yaml

from .children import follow
from .context import DB_SHADOW, Context
from .eventset import EventSet
from .measure import CpuTrace
from .report import LEADPULSE, SHADOW, Report, measured

#: the shadow's MQL bar: low enough that the models disagree on some leads, as a candidate would
SHADOW_MQL = 45


def candidate() -> str:
    data = yaml.safe_load(files("leadpulse").joinpath("default_model.yaml").read_text(encoding="utf-8"))
    data["version"] = f"bench-shadow-mql{SHADOW_MQL}"
    data["stages"] = [dict(s, min_score=SHADOW_MQL) if s["name"] == "mql" else s for s in data["stages"]]
    return yaml.safe_dump(data)


async def stage(ctx: Context, data: EventSet, report: Report) -> None:
    total = data.total
    path = ctx.workdir / "shadow-model.yaml"
    path.write_text(candidate(), encoding="utf-8")
    await ctx.flush(DB_SHADOW)
    with CpuTrace(ctx.pids) as trace:
        worker = ctx.worker("shadow", ctx.url(DB_SHADOW), log_level="warning", shadow_model=str(path),
                            shadow_topic=f"{ctx.prefix}shadow.handoff.shadow")
        await worker.wait_ready()
        await follow(worker, worker.processed, total, on_progress=ctx.task(SHADOW, total))
        work = await worker.work()
        samples = await worker.metrics() or []
    report.rows.append(measured(SHADOW, work, trace, f"worker CPU; shadow MQL bar {SHADOW_MQL} (live 60)"))
    decisions: dict[str, int] = {}
    for s in samples:
        if s.name == "leadpulse_shadow_decisions_total":
            decisions[s.labels["agreement"]] = decisions.get(s.labels["agreement"], 0) + int(s.value)
    delta = {s.name: s.value for s in samples if s.name in ("leadpulse_shadow_score_delta_signed_sum",
                                                            "leadpulse_shadow_score_delta_count")}
    failures = sum(s.value for s in samples if s.name == "leadpulse_shadow_failures_total")
    report.checks["shadow_decisions"] = decisions
    report.checks["shadow_score_delta_mean"] = (
        round(delta["leadpulse_shadow_score_delta_signed_sum"] / delta["leadpulse_shadow_score_delta_count"], 3)
        if delta.get("leadpulse_shadow_score_delta_count") else None)
    report.checks["shadow_failures"] = int(failures)
    live = report.row(LEADPULSE)
    shadow = report.row(SHADOW)
    if live and shadow and live.rate and live.events and shadow.events:
        report.checks["shadow_rate_vs_worker"] = round(shadow.rate / live.rate, 3)
        report.checks["shadow_extra_cpu_s_per_million"] = round(shadow.per_million(shadow.cpu) - live.per_million(live.cpu), 2)
    worker.stop()
