"""Memory has a bound: idle leads in the first stage expire, anonymous visitors are capped.

Against a real redis-server. Expiry itself is Redis's; the tests check the TTLs the scripts set
(and an expired state is simulated by deleting it, as Redis would)."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from leadpulse import layout
from leadpulse.dev.embedded import RedisServer, TansuBroker, free_port
from leadpulse.errors import ConfigError
from leadpulse.model import ScoringModel
from leadpulse.bounds import Retention
from leadpulse.state import DUPLICATE, SCORED, LeadStore

from tests.support.fixtures import DAY, T0, event
from tests.support.kafkatools import WorkerProcess, produce, running, wait_for
from .test_worker import metric_value

TTL = 400 * DAY


def positions(events: list) -> list:  # type: ignore[type-arg]
    return [(e, f"t:0:{i}") for i, e in enumerate(events)]


async def expiry(redis: Redis, store: LeadStore, lead: str) -> dict[str, int]:
    k = store.keys.lead(lead)
    return {name: await redis.pttl(key) for name, key in zip(("state", "dedup", "replay", "traits"), k)}


async def traits_deadline(redis: Redis, store: LeadStore, lead: str) -> int | None:
    state = layout.unpack(await redis.get(store.keys.lead(lead).state))
    assert state is not None
    return state.traits_expiry


async def test_a_lead_in_the_first_stage_expires_and_a_staged_one_does_not(redis: Redis, model: ScoringModel) -> None:
    store = LeadStore(redis, model, retention=Retention(lead_ttl_ms=TTL))
    identify = event("profile", "identify", T0, lead="x1", traits={"seniority": "manager", "email": "a@acme.io"})
    await store.apply(positions([identify]))
    ttl = await expiry(redis, store, "x1")
    assert 0 < ttl["state"] <= TTL
    assert ttl["state"] < ttl["traits"] <= TTL + TTL // 8  # the traits outlive the state, a little
    assert 0 < ttl["dedup"] <= model.dedup_window < ttl["state"]  # gone before the state
    # Promoted to MQL: kept for good, traits too.
    await store.apply(positions([event("web", "demo_request", T0 + 1, lead="x1"),
                                 event("web", "page_view", T0 + 2, lead="x1", url="/pricing")]))
    assert (await store.view("x1", T0 + 3)).stage == "mql"
    ttl = await expiry(redis, store, "x1")
    assert ttl["state"] == ttl["traits"] == -1
    assert await traits_deadline(redis, store, "x1") is None
    # Decay takes it back to the first stage: the sweep's write sets the expiry again.
    swept = await store.sweep(T0 + 400 * DAY)
    assert [t.to_stage for t in swept] == [0]
    outbox = await redis.pttl(store.keys.lead("x1").outbox)
    assert 0 < outbox <= TTL
    await store.ack(swept)
    ttl = await expiry(redis, store, "x1")
    assert 0 < ttl["state"] <= TTL < ttl["traits"]


async def test_traits_expiry_is_renewed_only_when_the_states_would_pass_it(redis: Redis, model: ScoringModel) -> None:
    store = LeadStore(redis, model, retention=Retention(lead_ttl_ms=TTL))
    await store.apply(positions([event("profile", "identify", T0, lead="x2", traits={"seniority": "vp"})]))
    first = await traits_deadline(redis, store, "x2")
    assert first is not None
    for k in range(3):  # more events: the state is rewritten with PX, the traits are left alone
        await store.apply(positions([event("web", "page_view", T0 + 1 + k, lead="x2", url="/blog")]))
        assert 0 < (await expiry(redis, store, "x2"))["state"] <= TTL
        assert await traits_deadline(redis, store, "x2") == first
    # New traits are a SET (it clears the expiry): renewed then.
    await store.apply(positions([event("profile", "identify", T0 + 10, lead="x2", traits={"employees": 300})]))
    assert (await traits_deadline(redis, store, "x2")) >= first
    assert 0 < (await expiry(redis, store, "x2"))["traits"]


async def test_a_lead_that_comes_back_after_expiring_starts_afresh(redis: Redis, model: ScoringModel) -> None:
    store = LeadStore(redis, model, retention=Retention(lead_ttl_ms=TTL))
    await store.apply(positions([
        event("profile", "identify", T0, lead="x3", traits={"seniority": "vp", "industry": "software"}),
        event("web", "demo_request", T0 + 1, lead="x3", event_id="x3-demo"),
    ]))
    assert (await store.view("x3", T0 + 2)).explanation.fit_score == 35
    # Redis expires the state first; the traits may outlive it by up to ttl/8.
    await redis.delete(store.keys.lead("x3").state, store.keys.lead("x3").dedup)
    later = T0 + 500 * DAY
    await store.apply(positions([
        event("profile", "identify", later, lead="x3", traits={"employees": 300}),
        event("web", "demo_request", later + 1, lead="x3"),
    ]))
    view = await store.view("x3", later + 2)
    by_rule = {c.rule_id: c.points for c in view.explanation.contributions}
    assert by_rule["demo_request"] == pytest.approx(50)  # `once` awards again: a fresh lead
    assert view.explanation.fit_score == 15  # the stale seniority and industry are not merged in
    assert "seniority_exec" not in by_rule and "industry_target" not in by_rule


async def test_no_expiry_when_the_ttl_is_zero(redis: Redis, model: ScoringModel) -> None:
    store = LeadStore(redis, model, retention=Retention(lead_ttl_ms=0, alias_ttl_ms=0))
    await store.apply(positions([event("profile", "identify", T0, lead="x4", anon="c4", traits={"seniority": "vp"})]))
    ttl = await expiry(redis, store, "x4")
    assert ttl["state"] == ttl["traits"] == -1
    assert await redis.pttl(store.keys.anon("c4").alias) == -1
    # A lead that had an expiry loses it when the setting goes to 0 (at its next write).
    timed = LeadStore(redis, model, retention=Retention(lead_ttl_ms=TTL))
    await timed.apply(positions([event("web", "page_view", T0 + 1, lead="x4", url="/blog")]))
    assert (await expiry(redis, timed, "x4"))["state"] > 0
    await store.apply(positions([event("web", "page_view", T0 + 2, lead="x4", url="/blog")]))
    ttl = await expiry(redis, store, "x4")
    assert ttl["state"] == ttl["traits"] == -1


async def test_anonymous_visitors_are_bounded_by_the_settings(redis: Redis, model: ScoringModel) -> None:
    store = LeadStore(redis, model, retention=Retention(anon_ttl_ms=3 * DAY, anon_max_events=3, alias_ttl_ms=5 * DAY))
    views = [event("web", "page_view", T0 + k, lead=None, anon="v1", url="/pricing", event_id=f"long-event-id-{k:040d}")
             for k in range(5)]
    assert (await store.apply(positions(views))).outcomes == ["anonymous"] * 5
    log = store.keys.anon("v1").log
    assert await redis.llen(log) == 3  # the latest three
    assert 0 < await redis.pttl(log) <= 3 * DAY
    assert 0 < await redis.pttl(store.keys.anon("v1").dedup) <= 3 * DAY
    # A logged op keeps what merging needs, not the event's id or position (bytes bounded by the model).
    assert all(b"long-event-id" not in op and b"t:0:" not in op for op in await redis.lrange(log, 0, -1))
    link = event("profile", "identify", T0 + 10, lead="v1-lead", anon="v1", traits={})
    assert (await store.apply(positions([link]))).outcomes == [SCORED]
    assert 0 < await redis.pttl(store.keys.anon("v1").alias) <= 5 * DAY
    view = await store.view("v1-lead", T0 + 10)
    assert {c.rule_id: c.points for c in view.explanation.contributions}["pricing_page"] > 0
    # The merged events are deduplicated against the lead, by hash, like any other.
    assert (await store.apply(positions([views[-1]._replace(lead_id="v1-lead", anonymous_id=None)]))).outcomes == [DUPLICATE]


def test_a_lead_ttl_shorter_than_the_dedup_window_is_refused(model: ScoringModel) -> None:
    with pytest.raises(ConfigError, match="LEADPULSE_LEAD_TTL"):
        Retention(lead_ttl_ms=DAY).check(model)
    with pytest.raises(ConfigError, match="anon_ttl"):
        Retention(anon_ttl_ms=0).check(model)
    Retention(lead_ttl_ms=0).check(model)
    Retention(lead_ttl_ms=model.dedup_window).check(model)


# --- Redis refusing writes: a real worker, a real redis-server at maxmemory or read-only ---------


@pytest.mark.integration
@pytest.mark.slow
async def test_refused_writes_say_not_ready_with_the_reason_and_scoring_resumes(
        broker: TansuBroker, tmp_path: Path) -> None:
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", appendonly=False)
    server.start()
    client = Redis.from_url(server.url)
    worker = WorkerProcess(broker.bootstrap, server.url, tmp_path)
    try:
        async with running(worker):
            async def scored(lead: str) -> bool:
                return (await worker.get(f"/leads/{lead}"))[0] == 200

            await send(worker, broker, "before")
            await wait_for(lambda: scored("before"), 60, "the first event to be scored")
            refuse_and_allow = {
                # maxmemory below what Redis holds, without eviction: every write answers OOM
                "oom": ([("CONFIG", "SET", "maxmemory-policy", "noeviction"), ("CONFIG", "SET", "maxmemory", "1")],
                        [("CONFIG", "SET", "maxmemory", "0")]),
                # a replica of a primary that is not there: every write answers READONLY
                "readonly": ([("REPLICAOF", "127.0.0.1", str(free_port()))], [("REPLICAOF", "NO", "ONE")]),
            }
            for reason, (refuse, allow) in refuse_and_allow.items():
                for command in refuse:
                    await client.execute_command(*command)
                await send(worker, broker, f"during-{reason}")

                async def refused() -> bool:
                    status, body = await worker.get("/readyz")
                    return status == 503 and body["redis_write_refused"] == reason

                await wait_for(refused, 60, f"/readyz to report {reason}")
                status, body = await worker.get("/readyz")
                assert body["redis"] is True and body["reason"].startswith(f"redis refuses writes: {reason.upper()}")
                assert await metric_value(worker, "leadpulse_redis_write_refused", reason=reason) == 1
                assert await metric_value(worker, "leadpulse_ready") == 0
                assert not await scored(f"during-{reason}")  # waits, is not skipped
                for command in allow:
                    await client.execute_command(*command)
                await wait_for(lambda: scored(f"during-{reason}"), 60, f"scoring to resume after {reason}")

                async def ready_again() -> bool:
                    return (await worker.get("/readyz"))[0] == 200

                await wait_for(ready_again, 60, "/readyz to say ready again")
                assert await metric_value(worker, "leadpulse_redis_write_refused", reason=reason) == 0
            assert worker.proc is not None and worker.proc.poll() is None
    finally:
        await client.aclose()
        server.stop()


async def send(worker: WorkerProcess, broker: TansuBroker, lead: str) -> None:
    value = orjson.dumps({"event_id": f"{lead}-1", "lead_id": lead, "source": "web", "type": "demo_request",
                          "occurred_at": int(time.time() * 1000) - 1000})
    await produce(broker.bootstrap, [(worker.topic("web"), lead.encode(), value)])
