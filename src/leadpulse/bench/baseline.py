"""Stage `baseline`: a naive Faust agent, as a user would write it from the Faust tutorial: one
event at a time (`async for event in stream`), one LeadStore call, so one Redis round trip, per
event, the same scoring rules. Its rate and CPU come from its own account of its work (`Work`,
written to Redis four times a second); it is time-boxed by `--baseline-seconds`."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from .children import Child, child_env, follow
from .context import DB_BASELINE, Context
from .eventset import EventSet, create_topics
from .measure import CpuTrace, Work
from .report import BASELINE, Report, measured
from .scores import final_scores


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

    async def handle(message: Any) -> None:
        now = int(time.time() * 1000)
        try:
            parsed = contract.parse(message.value, now, model.clock_skew)
        except InvalidEvent:
            return
        result = await store.apply([(parsed, f"{message.topic}:{message.partition}:{message.offset}")], now)
        for t in result.transitions:
            if publishes(model, t):
                await handoffs.send(key=t.lead_id.encode(), value=orjson.dumps(build(model, t)))

    @app.agent(source)
    async def score(stream: Any) -> None:
        async for event in stream.events():
            if not work["start"]:
                work["start"], work["cpu_start"] = time.time(), time.process_time()
            await handle(event.message)
            work["events"] += 1
            work["end"], work["cpu_end"] = time.time(), time.process_time()

    @app.timer(0.25)
    async def progress() -> None:
        await redis.set(config["progress_key"], orjson.dumps(work))

    @app.task
    async def load_scripts() -> None:
        await scripts.load_all(redis)

    faust.Worker(app, loglevel="warning", redirect_stdouts=False).execute_from_commandline()


class Baseline(Child):
    """The naive Faust agent (`main`) in its own process."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        env = child_env({"LEADPULSE_BENCH_BASELINE": orjson.dumps(config).decode()})
        argv = [sys.executable, "-c", "from leadpulse.bench.baseline import main; main()"]
        super().__init__(argv, env, workdir / "baseline.log")


async def stage(ctx: Context, data: EventSet, report: Report, at: int) -> dict[str, float] | None:
    """The baseline's row; its leads' final scores if it handled the whole event set."""
    from redis.asyncio import Redis

    total = data.total
    client = Redis.from_url(ctx.url(DB_BASELINE))
    await client.flushdb()
    config = {
        "app_id": f"{ctx.tag}-naive", "bootstrap": ctx.bootstrap, "topics": ctx.topics, "partitions": ctx.partitions,
        "handoff_topic": f"{ctx.prefix}naive.handoff", "redis_url": ctx.url(DB_BASELINE), "progress_key": "bench:progress",
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
        await follow(baseline, count, total, on_progress=ctx.task(BASELINE, total), time_box=ctx.baseline_seconds)
        work = await baseline_work()
    complete = work.events >= total
    row = measured(BASELINE, work, trace, "worker CPU", complete)
    if not complete:
        row.note += f"; time-boxed at {ctx.baseline_seconds:.0f} s ({work.events:,} of {total:,} events)"
    report.rows.append(row)
    ctx.finish()
    baseline.stop()
    await client.aclose()
    scores = await final_scores(ctx.url(DB_BASELINE), data.leads, at) if complete else None
    await ctx.flush(DB_BASELINE)
    return scores
