"""Faults lose nothing and double-count nothing: kill -9, Redis and broker outages.

Each test replays a fixed event file through a real worker process while something breaks,
then compares every lead with the offline reference (the engine in-process over the same
file) and the handoff topic with the reference's transitions: each id exactly once.
Outage lengths default to 30 s (LEADPULSE_TEST_OUTAGE_S shortens them for local runs).
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from leadpulse import layout
from leadpulse.dev.embedded import RedisServer, TansuBroker, free_port
from leadpulse.model import ScoringModel
from leadpulse.dev.simulate import key_for
from leadpulse.keys import Keys
from leadpulse.state import LeadStore

from tests.support.kafkatools import WorkerProcess, committed_all, committed_offsets, produce, read_all, wait_for
from tests.support.netproxy import Proxy
from tests.support.reference import Reference, chunks, fixed_events, reference

pytestmark = [pytest.mark.integration, pytest.mark.slow]
OUTAGE_S = float(os.environ.get("LEADPULSE_TEST_OUTAGE_S", "30"))


def records_for(worker: WorkerProcess, events: list[dict[str, Any]]) -> list[tuple[str, bytes, bytes]]:
    # One topic for every source: Kafka orders a lead's events only within one partition, and
    # stage transitions depend on the order a lead's events arrive in (docs/scoring.md). The
    # reference applies the file in order, so the worker must see each lead's events in order.
    return [(worker.topic("web"), key_for(e), orjson.dumps(e)) for e in events]


async def metric(worker: WorkerProcess, name: str) -> float:
    status, text = await worker.get("/metrics")
    assert status == 200
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


async def drained(worker: WorkerProcess, bootstrap: str, redis_url: str) -> None:
    """Wait until every input offset is committed and the sweep has caught up."""
    topics = [worker.topic(s) for s in ("web", "email", "webinar", "profile", "crm")]

    async def done() -> bool:
        if not await committed_all(bootstrap, worker.settings["group_id"], topics):
            return False
        client = Redis.from_url(redis_url)
        try:
            return await client.zcount("lp:due", "-inf", int(time.time() * 1000)) == 0
        finally:
            await client.aclose()

    await wait_for(done, 180, "the worker to commit everything and sweep")


async def assert_matches_reference(
    worker: WorkerProcess, bootstrap: str, worker_redis: str, ref_redis: str, model: ScoringModel,
    events: list[dict[str, Any]],
) -> Reference:
    at = int(time.time() * 1000)
    ref = await reference(ref_redis, model, events, at, prefix=f"ref{worker.tag}")
    client = Redis.from_url(worker_redis)
    try:
        store = LeadStore(client, model)
        for lead, expected in ref.scores.items():
            view = await store.view(lead, at)
            assert view is not None, lead
            score = view.explanation.score
            assert math.isclose(score, expected, rel_tol=1e-9, abs_tol=1e-9), (lead, score, expected)
            assert view.stage == ref.stages[lead], (
                lead, layout.unpack(await client.get(store.keys.lead(lead).state)),
                layout.unpack(await client.get(Keys(f"ref{worker.tag}").lead(lead).state)))
    finally:
        await client.aclose()
    # Callers have drained the worker (every offset committed, the sweep caught up), so every
    # handoff is on the topic: read all of it, duplicates too, however long that takes.
    records = await read_all(bootstrap, worker.settings["handoff_topic"])
    ids = Counter(orjson.loads(r.value)["handoff_id"] for r in records)
    assert [i for i, n in ids.items() if n > 1] == [], "duplicate handoffs"
    extra = [orjson.loads(r.value) for r in records if orjson.loads(r.value)["handoff_id"] not in ref.handoff_ids]
    assert set(ids) == ref.handoff_ids, ([(h["lead_id"], h["kind"], h["previous_stage"], h["stage"], h["crossed_at"]) for h in extra], len(ref.handoff_ids - set(ids)))
    assert ref.handoff_ids, "the file must cause handoffs for this test to mean anything"
    return ref


@pytest.fixture
async def workers(tmp_path: Path) -> AsyncIterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.stop()


async def test_kill_9_five_times_loses_and_duplicates_nothing(
    broker: TansuBroker, redis_server: RedisServer, model: ScoringModel, tmp_path: Path, workers: list[WorkerProcess],
) -> None:
    rng = random.Random(5)
    events = fixed_events(300, seed=5)
    current = WorkerProcess(broker.bootstrap, redis_server.url, tmp_path, sweep_interval=0.5, batch_max=200)
    workers.append(current.start())
    parts = chunks(events, 12)
    kill_after = set(rng.sample(range(len(parts)), 5))  # five kills at random moments mid-stream
    for i, part in enumerate(parts):
        await produce(broker.bootstrap, records_for(current, part))
        await asyncio.sleep(rng.uniform(0.2, 1.5))
        if i in kill_after:
            current = current.kill_and_restart()
            workers.append(current)
    await current.wait_ready(120)
    await drained(current, broker.bootstrap, redis_server.url)
    await assert_matches_reference(current, broker.bootstrap, redis_server.url, redis_server.url, model, events)


async def test_sigterm_drains_commits_and_exits_cleanly(
    broker: TansuBroker, redis_server: RedisServer, model: ScoringModel, tmp_path: Path, workers: list[WorkerProcess],
) -> None:
    events = fixed_events(150, seed=6)
    # Small batches: a stream of them, so that the signal most likely lands between two.
    worker = WorkerProcess(broker.bootstrap, redis_server.url, tmp_path, batch_max=10)
    workers.append(worker.start())
    await worker.wait_ready()
    await produce(broker.bootstrap, records_for(worker, events))

    async def started() -> bool:
        return await metric(worker, "leadpulse_events_total") > 0

    # Not a fixed sleep: on a slow machine it might signal before the first event, and then the
    # check below would hold vacuously. (On a fast one the stream may be over by now: the checks
    # hold for any moment the signal lands.)
    await wait_for(started, 60, "the worker to handle its first events", interval=0.05)
    worker.signal(signal.SIGTERM)
    # Drained and exited by itself, cleanly (it gives the batch in flight at most 8 s,
    # ScoringService.shutdown_timeout); the deadline is generous, not a timing claim.
    assert worker.wait(60) == 0
    # Everything it applied, it committed: its successor finds no duplicate to skip.
    successor = worker.successor().start()
    workers.append(successor)
    await successor.wait_ready(120)
    await drained(successor, broker.bootstrap, redis_server.url)
    assert await metric(successor, 'leadpulse_events_total{outcome="duplicate"') == 0
    await assert_matches_reference(successor, broker.bootstrap, redis_server.url, redis_server.url, model, events)


async def test_redis_outage_stops_commits_then_recovers_and_data_loss_is_rescored(
    broker: TansuBroker, redis_server: RedisServer, model: ScoringModel, tmp_path: Path, workers: list[WorkerProcess],
) -> None:
    own = RedisServer(tmp_path / "redis-outage", appendonly=True)
    own.workdir.mkdir()
    own.start()
    try:
        events = fixed_events(200, seed=7)
        half = len(events) // 2
        worker = WorkerProcess(broker.bootstrap, own.url, tmp_path)
        workers.append(worker.start())
        await worker.wait_ready()
        await produce(broker.bootstrap, records_for(worker, events[:half]))
        await drained(worker, broker.bootstrap, own.url)
        topics = [worker.topic(s) for s in ("web", "email", "webinar", "profile", "crm")]
        before = await committed_offsets(broker.bootstrap, worker.settings["group_id"], topics)

        own.stop()  # SIGTERM: Redis writes its AOF and exits
        await produce(broker.bootstrap, records_for(worker, events[half:]))

        async def not_ready() -> bool:
            status, _ = await worker.get("/readyz")
            return status == 503

        async def redis_errors_counted() -> bool:
            return await metric(worker, "leadpulse_redis_errors_total") > 0

        await wait_for(not_ready, 30, "/readyz to report the outage")
        await wait_for(redis_errors_counted, 60, "the failed Redis calls to be counted")
        await asyncio.sleep(OUTAGE_S)  # the outage lasts; the worker must ride it out
        assert worker.proc is not None and worker.proc.poll() is None, "the worker must ride out the outage"
        # Nothing past the last applied event was committed while Redis was down.
        assert await committed_offsets(broker.bootstrap, worker.settings["group_id"], topics) == before

        own.start()  # same port, same directory: the AOF brings the data back
        await drained(worker, broker.bootstrap, own.url)
        await assert_matches_reference(worker, broker.bootstrap, own.url, redis_server.url, model, events)

        # Redis restarted with its data lost: rescore from the topics' retention.
        client = Redis.from_url(own.url)
        await client.flushall()
        await client.aclose()
        env = dict(worker.env)
        out = subprocess.run([sys.executable, "-m", "leadpulse", "rescore"], env=env, capture_output=True, timeout=300)
        assert out.returncode == 0, out.stderr.decode()[-2000:]
        assert f"rescored {len(events)} events" in out.stdout.decode()
        await assert_matches_reference(worker, broker.bootstrap, own.url, redis_server.url, model, events)
    finally:
        own.stop()


async def test_broker_unreachable_at_start_and_mid_run(
    redis_server: RedisServer, model: ScoringModel, tmp_path: Path, workers: list[WorkerProcess],
) -> None:
    broker_port, proxy_port = free_port(), free_port()
    own = TansuBroker(tmp_path, port=broker_port, advertised_port=proxy_port)
    own.start()
    proxy = Proxy(broker_port, proxy_port).start()
    try:
        proxy.cut()
        events = fixed_events(200, seed=8)
        worker = WorkerProcess(own.bootstrap, redis_server.url, tmp_path)
        workers.append(worker.start())

        async def kept_retrying() -> bool:
            # Its own count of failed attempts, not a sleep: three failures, one process. Its first
            # Kafka step is creating its topics (the producer starts once they exist).
            try:
                return await metric(worker, 'leadpulse_kafka_errors_total{op="create_topics"') >= 3
            except aiohttp.ClientError:
                return False  # its web server is not up yet

        await wait_for(kept_retrying, 120, "the worker to fail to reach the broker three times")
        assert worker.proc is not None and worker.proc.poll() is None, "no crash loop while the broker is down"
        assert (await worker.get("/healthz"))[0] == 200
        assert (await worker.get("/readyz"))[0] == 503
        proxy.restore()
        await worker.wait_ready(120)
        third = len(events) // 3
        await produce(own.bootstrap, records_for(worker, events[: 2 * third]))
        proxy.cut()

        async def not_ready() -> bool:
            return (await worker.get("/readyz"))[0] == 503

        await wait_for(not_ready, 60, "/readyz to report the broker outage")
        await asyncio.sleep(OUTAGE_S)  # the outage lasts; the worker must ride it out
        assert worker.proc.poll() is None
        assert (await worker.get("/readyz"))[0] == 503
        proxy.restore()
        await produce(own.bootstrap, records_for(worker, events[2 * third :]))
        await drained(worker, own.bootstrap, redis_server.url)
        await assert_matches_reference(worker, own.bootstrap, redis_server.url, redis_server.url, model, events)
    finally:
        try:
            proxy.close()
        finally:
            own.stop()
