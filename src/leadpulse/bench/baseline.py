"""Stage `baseline`: a naive Faust agent, written as Faust's own documentation shows one: an
agent iterating its stream value by value (`async for value in stream`), the worker started at
log level INFO (`faust -A app worker -l info`), one LeadStore call, so one Redis round trip, per
event, the same contract and scoring rules. It is run `--baseline-runs` times (it varies a lot
from run to run on a shared machine) and its row is the median run, with every run's rate in the
note; ratios are quoted against it.

A second row keeps the variant earlier versions of the bench measured, labelled as what it is:
`stream.events()` with the worker at log level WARNING. Below INFO Faust leaves its start-up
spinner on, which sets the root logger to DEBUG, so every aiokafka debug call builds a log record
(LeadPulse's worker switches the spinner off: worker.FaustWorker) — a handicap a user following
the docs does not have.

Each run's rate and CPU come from its own account of its work (`Work`, written to Redis four
times a second); it is time-boxed by `--baseline-seconds`."""

from __future__ import annotations

import os
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from .children import Child, child_env, follow
from .context import DB_BASELINE, Context
from .eventset import EventSet, create_topics
from .measure import CpuTrace, Work
from .report import BASELINE, BASELINE_VARIANT, Report, Throughput, measured
from .scores import final_scores


#: the honest baseline (as Faust's docs write an agent) and the variant kept as a second row
DOCS, EVENTS_WARNING = "docs", "events-warning"


def main() -> None:  # pragma: no cover - runs in a child process
    """The agent, configured by LEADPULSE_BENCH_BASELINE (JSON)."""
    import faust
    from redis.asyncio import Redis

    from .. import events as contract
    from .. import scripts
    from ..errors import InvalidEvent
    from ..handoff import build, publishes
    from ..model import load_model
    from ..state import LeadStore

    config = orjson.loads(os.environ["LEADPULSE_BENCH_BASELINE"])
    model = load_model()
    app = faust.App(
        config["app_id"], broker=f"kafka://{config['bootstrap']}",
        # Faust's default 60 s session makes a first join wait 30 s on Tansu (docs/architecture.md).
        broker_session_timeout=10, broker_heartbeat_interval=3,
        store="memory://", web_enabled=False, autodiscover=False, topic_replication_factor=1,
        topic_partitions=config["partitions"], consumer_auto_offset_reset="earliest", producer_acks=-1,
    )
    source = app.topic(*config["topics"], key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    handoffs = app.topic(config["handoff_topic"], key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    redis = Redis.from_url(config["redis_url"])
    store = LeadStore(redis, model)
    work = asdict(Work())  # its own account, as the worker keeps in leadpulse_work_seconds

    async def handle(message: Any) -> None:  # the same for both variants
        now = int(time.time() * 1000)
        try:
            parsed = contract.parse(message.value, now, model.clock_skew)
        except InvalidEvent:
            return
        result = await store.apply([(parsed, f"{message.topic}:{message.partition}:{message.offset}")], now)
        for t in result.transitions:
            if publishes(model, t):
                await handoffs.send(key=t.lead_id.encode(), value=orjson.dumps(build(model, t)))

    def started() -> None:
        if not work["start"]:
            work["start"], work["cpu_start"] = time.time(), time.process_time()

    def handled() -> None:
        work["events"] += 1
        work["end"], work["cpu_end"] = time.time(), time.process_time()

    if config["variant"] == DOCS:
        @app.agent(source)
        async def score(stream: Any) -> None:
            async for _value in stream:  # as in Faust's docs; the record it came from names its position
                started()
                await handle(stream.current_event.message)
                handled()
    else:
        @app.agent(source)
        async def score_events(stream: Any) -> None:
            async for event in stream.events():
                started()
                await handle(event.message)
                handled()

    @app.timer(0.25)
    async def progress() -> None:
        await redis.set(config["progress_key"], orjson.dumps(work))

    @app.task
    async def load_scripts() -> None:
        await scripts.load_all(redis)

    loglevel = "info" if config["variant"] == DOCS else "warning"
    faust.Worker(app, loglevel=loglevel, redirect_stdouts=False).execute_from_commandline()


class Baseline(Child):
    """The naive Faust agent (`main`) in its own process."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        env = child_env({"LEADPULSE_BENCH_BASELINE": orjson.dumps(config).decode()})
        argv = [sys.executable, "-c", "from leadpulse.bench.baseline import main; main()"]
        super().__init__(argv, env, workdir / "baseline.log")


async def stage(ctx: Context, data: EventSet, report: Report, at: int) -> dict[str, float] | None:
    """The baseline's rows (the docs' agent: the median of its runs; the variant); the final scores
    of the first docs run that handled the whole event set."""
    runs: list[Throughput] = []
    scores: dict[str, float] | None = None
    for i in range(max(1, ctx.baseline_runs)):
        row, done = await _one_run(ctx, data, at, DOCS, f"{BASELINE} (run {i + 1})")
        runs.append(row)
        scores = scores if scores is not None else done
    report.rows.append(median_row(BASELINE, runs))
    if ctx.baseline_variant:
        row, _ = await _one_run(ctx, data, at, EVENTS_WARNING, BASELINE_VARIANT)
        report.rows.append(row)
    return scores


def median_row(name: str, runs: list[Throughput]) -> Throughput:
    """The run with the median rate (the lower middle of an even count), named `name`, every run's
    rate in `runs` and the note."""
    ordered = sorted(runs, key=lambda r: r.rate)
    mid = ordered[(len(ordered) - 1) // 2]
    rates = [round(r.rate, 1) for r in runs]
    note = mid.note
    if len(runs) > 1:
        note = (f"median of {len(runs)} runs: " + ", ".join(f"{x:,.0f}" for x in rates)
                + f" events/s (spread {min(rates):,.0f}–{max(rates):,.0f}); " + note)
    return Throughput(name, mid.events, mid.seconds, mid.cpu, mid.redis_cpu, mid.broker_cpu, mid.complete, note,
                      runs=rates)


async def _one_run(ctx: Context, data: EventSet, at: int, variant: str, name: str) -> tuple[Throughput, dict[str, float] | None]:
    from redis.asyncio import Redis

    total = data.total
    client = Redis.from_url(ctx.url(DB_BASELINE))
    await client.flushdb()
    run = uuid.uuid4().hex[:6]
    config = {
        "app_id": f"{ctx.tag}-naive-{run}", "bootstrap": ctx.bootstrap, "topics": ctx.topics,
        "partitions": ctx.partitions, "handoff_topic": f"{ctx.prefix}naive.handoff", "redis_url": ctx.url(DB_BASELINE),
        "progress_key": "bench:progress", "variant": variant,
    }
    await create_topics(ctx.bootstrap, [config["handoff_topic"]], ctx.partitions)
    baseline = Baseline(ctx.workdir, config)
    ctx.children.append(baseline)

    async def baseline_work() -> Work:
        raw = await client.get("bench:progress")
        return Work(**orjson.loads(raw)) if raw else Work()

    async def count() -> int:
        return (await baseline_work()).events

    with CpuTrace(ctx.pids) as trace:
        await follow(baseline, count, total, on_progress=ctx.task(name, total), time_box=ctx.baseline_seconds)
        work = await baseline_work()
    complete = work.events >= total
    row = measured(name, work, trace, "worker CPU", complete)
    if not complete:
        row.note += f"; time-boxed at {ctx.baseline_seconds:.0f} s ({work.events:,} of {total:,} events)"
    ctx.finish()
    baseline.stop()
    await client.aclose()
    scores = await final_scores(ctx.url(DB_BASELINE), data.leads, at) if complete else None
    await ctx.flush(DB_BASELINE)
    return row, scores
