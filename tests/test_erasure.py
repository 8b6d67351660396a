"""Erasure erases: a lead's data and its visitors' links go, and a tombstone keeps replays, merges
and rescores from bringing it back. Real redis-server; the last test runs a real worker."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from leadpulse.admin import forget
from leadpulse.dev.embedded import RedisServer, TansuBroker
from leadpulse.model import ScoringModel
from leadpulse.bounds import Retention
from leadpulse.state import ANONYMOUS, ERASED, SCORED, LeadStore

from tests.support.fixtures import DAY, T0, event
from tests.support.kafkatools import WorkerProcess, produce, running, wait_for

ADMIN = "erase-admin-token"


def positions(events: list) -> list:  # type: ignore[type-arg]
    return [(e, f"t:0:{i}") for i, e in enumerate(events)]


async def lead_with_a_visitor(store: LeadStore, lead: str, cookie: str) -> list:  # type: ignore[type-arg]
    history = [
        event("web", "page_view", T0, lead=None, anon=cookie, url="/pricing", event_id=f"{lead}-a"),
        event("profile", "identify", T0 + 1, lead=lead, anon=cookie, traits={"seniority": "vp"}, event_id=f"{lead}-i"),
        event("web", "demo_request", T0 + 2, lead=lead, event_id=f"{lead}-d"),
        event("web", "page_view", T0 + 3, lead=None, anon=cookie, url="/blog", event_id=f"{lead}-b"),
    ]
    assert (await store.apply(positions(history[:1]))).outcomes == [ANONYMOUS]
    assert (await store.apply(positions(history[1:]))).outcomes == [SCORED, SCORED, SCORED]
    assert (await store.view(lead, T0 + 4)).stage == "mql"
    return history


async def test_erasing_removes_the_lead_and_its_links_and_its_events_are_refused(redis: Redis, model: ScoringModel) -> None:
    store = LeadStore(redis, model, retention=Retention(tombstone_ttl_ms=30 * DAY))
    history = await lead_with_a_visitor(store, "gone", "gone-cookie")
    assert await redis.get(store.keys.anon("gone-cookie").alias) == b"gone"
    assert await forget(store, "gone") is True
    k = store.keys.lead("gone")
    assert await store.view("gone", T0 + 5) is None
    assert not await redis.exists(k.dedup, k.replay, k.traits, k.outbox, k.visitors)
    assert not await redis.exists(*store.keys.anon("gone-cookie"))  # the link is gone
    assert await redis.zscore("lp:due", "gone") is None and await redis.zscore("lp:top", "gone") is None
    assert 0 < await redis.pttl(k.state) <= 30 * DAY  # the tombstone, for tombstone_ttl
    assert await store.top(10, T0 + 5) == []

    # The next anonymous event from the linked cookie is an anonymous visitor's, not the lead's.
    later = event("web", "page_view", T0 + 10, lead=None, anon="gone-cookie", url="/pricing")
    assert (await store.apply(positions([later]))).outcomes == [ANONYMOUS]
    assert await store.view("gone", T0 + 11) is None
    # The lead's own events, replayed or new, are refused; so is a visitor's merge into it.
    again = [e._replace(event_id=f"{e.event_id}-new") for e in history if e.lead_id] + history
    assert (await store.apply(positions(again))).outcomes == [ERASED] * 6  # the cookie's too: linked again in the batch
    assert await store.view("gone", T0 + 11) is None
    assert not await redis.exists(*store.keys.anon("gone-cookie"))  # the re-made link was removed too
    assert not await redis.exists(k.visitors)
    assert await store.sweep(T0 + 1000 * DAY) == []
    # Erasing again finds nothing but keeps the tombstone.
    assert await forget(store, "gone") is False
    assert (await store.apply(positions([history[2]._replace(event_id="x")]))).outcomes == [ERASED]


async def test_a_worker_that_remembered_the_link_refuses_and_forgets_it(redis: Redis, model: ScoringModel) -> None:
    # Two workers: one has the visitor's link in its cache, the other serves DELETE.
    cached = LeadStore(redis, model)
    await lead_with_a_visitor(cached, "c-gone", "c-cookie")
    assert await forget(LeadStore(redis, model), "c-gone") is True
    view = event("web", "page_view", T0 + 10, lead=None, anon="c-cookie", url="/blog")
    assert (await cached.apply(positions([view]))).outcomes == [ERASED]
    # The cache entry is dropped: the visitor's next event is logged as an anonymous visitor's.
    assert (await cached.apply(positions([view._replace(event_id="next")]))).outcomes == [ANONYMOUS]
    assert await cached.view("c-gone", T0 + 11) is None


async def test_erasing_a_lead_not_seen_yet_refuses_its_events_to_come(redis: Redis, model: ScoringModel) -> None:
    store = LeadStore(redis, model, retention=Retention(tombstone_ttl_ms=0))
    assert await forget(store, "future") is False
    assert await redis.pttl(store.keys.lead("future").state) == -1  # tombstone_ttl 0: kept forever
    demo = event("web", "demo_request", T0, lead="future")
    assert (await store.apply(positions([demo]))).outcomes == [ERASED]
    assert await store.view("future", T0) is None


@pytest.mark.integration
@pytest.mark.slow
async def test_erased_leads_stay_erased_through_a_linked_cookie_and_a_rescore(
        broker: TansuBroker, tmp_path: Path, model: ScoringModel) -> None:
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", appendonly=False)
    server.start()
    client = Redis.from_url(server.url)
    worker = WorkerProcess(broker.bootstrap, server.url, tmp_path, admin_token=ADMIN)
    try:
        async with running(worker):
            now = int(time.time() * 1000) - 60_000

            def web(event_id: str, at: int, **ids: str) -> tuple[str, bytes, bytes]:
                e = {"event_id": event_id, "source": "web", "type": "demo_request" if "lead_id" in ids else "page_view",
                     "occurred_at": at, "properties": {"url": "https://acme.io/pricing"}, **ids}
                return worker.topic("web"), (ids.get("lead_id") or ids["anonymous_id"]).encode(), orjson.dumps(e)

            identify = {"event_id": "e-link", "lead_id": "erase-me", "anonymous_id": "erase-cookie", "source": "profile",
                        "type": "identify", "occurred_at": now + 1, "traits": {"seniority": "vp"}}
            await produce(broker.bootstrap, [web("e-anon", now, anonymous_id="erase-cookie"),
                                             web("k-demo", now, lead_id="keep-me")])
            await produce(broker.bootstrap, [(worker.topic("profile"), b"erase-cookie", orjson.dumps(identify)),
                                             web("e-demo", now + 2, lead_id="erase-me")])

            async def scored(lead: str, rule: str) -> bool:
                status, body = await worker.get(f"/leads/{lead}")
                return status == 200 and rule in {c["rule_id"] for c in body["contributions"]}

            await wait_for(lambda: scored("erase-me", "pricing_page"), 60, "the visitor to merge into erase-me")
            await wait_for(lambda: scored("erase-me", "demo_request"), 60, "erase-me's demo request")
            await wait_for(lambda: scored("keep-me", "demo_request"), 60, "keep-me to be scored")

            headers = {"Authorization": f"Bearer {ADMIN}"}
            async with aiohttp.ClientSession() as http, http.delete(worker.url + "/leads/erase-me", headers=headers) as resp:
                assert resp.status == 200 and await resp.json() == {"deleted": "erase-me"}
            assert (await worker.get("/leads/erase-me"))[0] == 404

            # The cookie comes back; a lead behind it in its partition (keyed as the cookie is) shows
            # it was handled.
            topic, _, sentinel = web("s-after", now + 11, lead_id="erase-cookie-sentinel")
            await produce(broker.bootstrap, [web("e-after", now + 10, anonymous_id="erase-cookie"),
                                             (topic, b"erase-cookie", sentinel)])
            await wait_for(lambda: scored("erase-cookie-sentinel", "demo_request"), 60, "the events after the erasure")
            assert (await worker.get("/leads/erase-me"))[0] == 404
            assert await client.get((await worker_keys(client)).anon("erase-cookie").alias) is None

            # Redis loses keep-me; a rescore from the topics brings it back, and not erase-me.
            before = await worker_keys(client)
            await client.delete(*before.lead("keep-me"))
            out = subprocess.run([sys.executable, "-m", "leadpulse", "rescore"], env=worker.env, capture_output=True,
                                 timeout=300)
            assert out.returncode == 0, out.stderr.decode()[-2000:]
            assert await scored("keep-me", "demo_request"), out.stdout.decode() + out.stderr.decode()[-3000:]
            assert (await worker.get("/leads/erase-me"))[0] == 404
            # rescore rebuilt into a fresh key space: look where the worker now keeps its leads
            after = await worker_keys(client)
            assert after.space != before.space
            assert await client.get(after.anon("erase-cookie").alias) is None
            assert not await client.exists(after.lead("erase-me").visitors)
            assert await client.get(after.lead("erase-me").state) is not None  # the tombstone carried over
            assert worker.proc is not None and worker.proc.poll() is None
    finally:
        await client.aclose()
        server.stop()


async def worker_keys(client: Redis):  # type: ignore[no-untyped-def]
    """The keys of the key space the deployment uses now (a rescore switches to a fresh one)."""
    from leadpulse.keys import Keys

    pointer = await client.get(Keys().pointer)
    return Keys().in_space(pointer.decode()) if pointer else Keys()
