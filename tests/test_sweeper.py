"""The decay sweep (sweeper.py, LeadStore.sweep) when a lead or a whole pass fails: one lead's
unreadable state costs only that lead; /readyz turns 503 only after consecutive failed runs.
Real Redis, a real broker and a real worker process."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from leadpulse.dev.embedded import RedisServer, TansuBroker
from leadpulse.errors import StateError
from leadpulse.model import ScoringModel
from leadpulse.state import LeadStore
from leadpulse.sweeper import FAILURES_NOT_READY

from tests.support.fixtures import DAY, T0, event
from tests.support.kafkatools import WorkerProcess, consume_until, running, wait_for
from tests.test_worker import metric_value

pytestmark = pytest.mark.integration

#: a lead that cannot be unpacked: 0xc1 is the one byte msgpack never uses
CORRUPT = b"\xc1 not a packed state"


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[tuple[RedisServer, Redis]]:
    """A redis-server of the test's own: its worker's sweep lock and due index are no one else's."""
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis")
    server.start()
    client = Redis.from_url(server.url)
    try:
        yield server, client
    finally:
        await client.aclose()
        server.stop()


async def promoted_then_acknowledged(store: LeadStore, leads: list[str], at: int) -> int:
    """Each lead promoted to MQL at `at` by a demo request and a pricing page (default model: 76
    points, MQL from 60, left below 50), the promotions acknowledged as published; returns the
    instant by which every lead has decayed out of MQL (their due times, read from the due index)."""
    batch = [e for lead in leads for e in (event("web", "demo_request", at, lead=lead, event_id=f"{lead}-demo"),
                                           event("web", "page_view", at, lead=lead, event_id=f"{lead}-pricing",
                                                 url="https://acme.io/pricing"))]
    result = await store.apply([(e, f"t:0:{i}") for i, e in enumerate(batch)], at)
    assert sorted((t.lead_id, t.kind) for t in result.transitions) == sorted((lead, "promoted") for lead in leads)
    await store.ack(result.transitions)
    due = [await store.redis.zscore(store.keys.indexes(store.keys.shard(lead))[0], lead) for lead in leads]
    assert all(d is not None and d > at for d in due), due
    return int(max(d for d in due if d is not None)) + 1


async def test_a_lead_the_sweep_cannot_read_is_skipped_with_its_reason_and_the_others_are_demoted(
        redis: Redis, model: ScoringModel) -> None:
    store = LeadStore(redis, model)
    due = await promoted_then_acknowledged(store, ["ok-1", "bad", "ok-2"], T0)
    await redis.set(store.keys.lead("bad").state, CORRUPT)

    with pytest.raises(StateError):  # without `skipped` a lead's failure is the pass's, as before
        await store.sweep(due)
    skipped: list[tuple[str, str, Exception]] = []
    swept = await store.sweep(due, skipped=skipped)
    assert sorted((t.lead_id, t.kind) for t in swept) == [("ok-1", "demoted"), ("ok-2", "demoted")]
    assert [(lead, reason) for lead, reason, _ in skipped] == [("bad", "script_error")]
    await store.ack(swept)
    # The skipped lead stays due, and the next pass skips it again and sweeps nothing twice.
    again: list[tuple[str, str, Exception]] = []
    assert await store.sweep(due + DAY, skipped=again) == []
    assert [lead for lead, _, _ in again] == ["bad"]


@pytest.mark.slow
async def test_the_worker_demotes_every_other_lead_and_stays_ready_beside_an_unreadable_one(
        broker: TansuBroker, model: ScoringModel, own_redis: tuple[RedisServer, Redis], tmp_path: Path) -> None:
    server, redis = own_redis
    store = LeadStore(redis, model)
    leads = ["lead-a", "lead-broken", "lead-b", "lead-c"]
    # Promoted long enough ago that each has been due for its demotion for days when the worker starts.
    now = int(time.time() * 1000)
    assert await promoted_then_acknowledged(store, leads, now - 120 * DAY) < now
    await redis.set(store.keys.lead("lead-broken").state, CORRUPT)

    async with running(WorkerProcess(broker.bootstrap, server.url, tmp_path)) as worker:
        def demoted(records: list) -> set[str]:  # type: ignore[type-arg]
            return {r.key.decode() for r in records if orjson.loads(r.value)["kind"] == "demoted"}

        records = await consume_until(broker.bootstrap, worker.settings["handoff_topic"],
                                      lambda rs: demoted(rs) >= {"lead-a", "lead-b", "lead-c"}, timeout=90)
        assert demoted(records) == {"lead-a", "lead-b", "lead-c"}

        async def skipped_three_times() -> bool:
            return await metric_value(worker, "leadpulse_sweep_skipped_leads_total", reason="script_error") >= 3

        await wait_for(skipped_three_times, 60, "three passes skipping the unreadable lead")
        # Those passes completed: the sweep is healthy, and so is the worker.
        assert await metric_value(worker, "leadpulse_sweep_last_success_timestamp_seconds") > 0
        status, body = await worker.get("/readyz")
        assert (status, body["ready"]) == (200, True), body
        assert "sweep skipped lead 'lead-broken' (script_error" in worker.log.read_text()
    assert "lead-broken" not in {r.key.decode() for r in records}


@pytest.mark.slow
async def test_readyz_says_503_only_after_consecutive_failed_sweeps_and_recovers_with_the_next_run(
        broker: TansuBroker, model: ScoringModel, own_redis: tuple[RedisServer, Redis], tmp_path: Path) -> None:
    server, redis = own_redis
    store = LeadStore(redis, model)
    await store.ready()
    (due_index,) = {store.keys.indexes(shard)[0] for shard in store.keys.shards()}
    async with running(WorkerProcess(broker.bootstrap, server.url, tmp_path)) as worker:
        async def ready() -> bool:
            return (await worker.get("/readyz"))[0] == 200

        await wait_for(ready, 60, "the worker ready")
        # Every pass now fails as a whole (WRONGTYPE on the due index) while Redis answers PING.
        await redis.set(due_index, b"not a sorted set")

        async def failing() -> bool:
            status, body = await worker.get("/readyz")
            return status == 503 and str(body["reason"]).startswith("decay sweep failing")

        await wait_for(failing, 60, "/readyz saying the sweep fails")
        assert await metric_value(worker, "leadpulse_redis_errors_total", op="sweep") >= FAILURES_NOT_READY
        await redis.delete(due_index)
        await wait_for(ready, 60, "ready again after a sweep run completed")
