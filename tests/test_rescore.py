"""`leadpulse rescore` rebuilds into a fresh key space and switches every worker over: each
retained event counts once whatever the dedup window, events arriving meanwhile are neither lost
nor doubled, no handoff is published twice, tombstones carry over. Real broker, redis-server
and worker process."""

from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from redis.asyncio import Redis

from leadpulse.admin import rescore
from leadpulse.dev.embedded import RedisServer, TansuBroker
from leadpulse.dev.simulate import key_for
from leadpulse.model import ScoringModel, load_model
from leadpulse.settings import load_settings
from leadpulse.state import LeadStore

from tests.support.kafkatools import WorkerProcess, committed_all, produce, read_all, running, wait_for
from tests.support.reference import fixed_events, reference

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ADMIN = "rescore-admin"


def short_dedup_model(tmp_path: Path, window: str = "2s") -> tuple[Path, ScoringModel]:
    data = yaml.safe_load((Path(__file__).parent.parent / "src/leadpulse/default_model.yaml").read_text())
    data["dedup_window"] = window
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, load_model(path)


def records(worker: WorkerProcess, events: list[dict[str, Any]]) -> list[tuple[str, bytes, bytes]]:
    # one topic: a lead's events keep their order (as tests/test_reliability.py explains)
    return [(worker.topic("web"), key_for(e), orjson.dumps(e)) for e in events]


async def committed(worker: WorkerProcess, bootstrap: str) -> None:
    topics = [worker.topic(s) for s in ("web", "email", "webinar", "profile", "crm")]
    await wait_for(lambda: committed_all(bootstrap, worker.settings["group_id"], topics), 120,
                   "the worker to commit every event")


async def current_store(client: Redis, model: ScoringModel) -> LeadStore:
    store = LeadStore(client, model)  # follows the pointer to the current key space
    await store.ready()
    return store


async def assert_equals_reference(client: Redis, redis_url: str, model: ScoringModel, events: list[dict[str, Any]],
                                  handoff_topic: str, bootstrap: str, tag: str) -> None:
    at = int(time.time() * 1000)
    ref = await reference(redis_url, model, events, at, prefix=f"ref-{tag}")
    store = await current_store(client, model)
    for lead, expected in ref.scores.items():
        view = await store.view(lead, at)
        assert view is not None, lead
        assert math.isclose(view.explanation.score, expected, rel_tol=1e-9, abs_tol=1e-9), (lead, view.explanation.score, expected)
        assert view.stage == ref.stages[lead], lead
    published = [orjson.loads(r.value)["handoff_id"] for r in await read_all(bootstrap, handoff_topic)]
    assert [i for i, n in Counter(published).items() if n > 1] == [], "a handoff was published twice"
    assert set(published) == ref.handoff_ids, "handoffs lost or made up"


async def test_rescore_while_a_worker_runs_counts_every_event_once_and_loses_none(
        broker: TansuBroker, tmp_path: Path) -> None:
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", appendonly=False)
    server.start()
    client = Redis.from_url(server.url)
    model_path, model = short_dedup_model(tmp_path)
    worker = WorkerProcess(broker.bootstrap, server.url, tmp_path, model=model_path, admin_token=ADMIN)
    events = fixed_events(120, seed=23)
    a, b, c = events[: len(events) // 2], events[len(events) // 2 : 3 * len(events) // 4], events[3 * len(events) // 4 :]
    try:
        async with running(worker):
            await produce(broker.bootstrap, records(worker, a))
            await committed(worker, broker.bootstrap)

            async def dedup_expired() -> bool:  # every retained event is older than the window now
                return not [k async for k in client.scan_iter(match="lp:l{*}:d", count=1000)]

            await wait_for(dedup_expired, 60, "the dedup sets to expire (window 2 s)")
            settings = load_settings(**worker.settings)
            seen_while_held: list[int] = []

            async def phase(name: str) -> None:
                if name == "rebuilt":  # the worker goes on scoring into the old space
                    await produce(broker.bootstrap, records(worker, b))
                    await committed(worker, broker.bootstrap)
                elif name == "held":  # held: these wait in Kafka for the new space
                    await produce(broker.bootstrap, records(worker, c))
                    status, _ = await worker.get(f"/leads/{a[0]['lead_id']}")
                    seen_while_held.append(status)  # reads are still served (old space)

            result = await rescore(settings, model, batch=100, on_phase=phase)
            assert result.previous == "lp" and result.space == "lp:g1"
            assert result.workers == 1 and result.tail == len(b)  # applied while the worker held
            assert result.events == len(a) + len(b) and result.scored == len(a) + len(b)
            assert seen_while_held == [200]
            assert await client.get("lp:space") == b"lp:g1"
            assert not [k async for k in client.scan_iter(match="lp:[lLaA]{*", count=1000)], "old space left"
            await committed(worker, broker.bootstrap)  # c, applied by the worker after the switch
            await assert_equals_reference(client, server.url, model, events, worker.settings["handoff_topic"],
                                          broker.bootstrap, "once")

            # Again, with nothing new: the same numbers, another space.
            await wait_for(dedup_expired, 60, "the dedup sets to expire again")
            again = await rescore(settings, model)
            assert again.previous == "lp:g1" and again.space == "lp:g2" and again.tail == 0
            await assert_equals_reference(client, server.url, model, events, worker.settings["handoff_topic"],
                                          broker.bootstrap, "twice")
            assert worker.proc is not None and worker.proc.poll() is None
    finally:
        await client.aclose()
        server.stop()


async def test_tombstones_carry_over_erasures_during_the_rebuild_count_and_unretained_leads_are_kept(
        broker: TansuBroker, tmp_path: Path, model: ScoringModel) -> None:
    import aiohttp

    from leadpulse.state import ERASED

    from tests.support.fixtures import event

    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", appendonly=False)
    server.start()
    client = Redis.from_url(server.url)
    worker = WorkerProcess(broker.bootstrap, server.url, tmp_path, admin_token=ADMIN)
    now = int(time.time() * 1000) - 60_000

    def demo(lead: str, n: int) -> dict[str, Any]:
        return {"event_id": f"{lead}-{n}", "source": "web", "type": "demo_request", "occurred_at": now + n,
                "lead_id": lead, "properties": {"url": "https://acme.io/demo"}}

    async def delete(lead: str) -> None:
        headers = {"Authorization": f"Bearer {ADMIN}"}
        async with aiohttp.ClientSession() as http, http.delete(f"{worker.url}/leads/{lead}", headers=headers) as resp:
            assert resp.status == 200

    try:
        async with running(worker):
            # "old-timer" scored long ago: none of its events is on the topics any more
            store = await current_store(client, model)
            await store.apply([(event("web", "demo_request", now - 1000, lead="old-timer", url="/demo"), "gone:0:0")])
            before = (await store.view("old-timer", now)).explanation.score
            await produce(broker.bootstrap, records(worker, [demo("erased-before", 1), demo("erased-during", 2),
                                                              demo("kept", 3)]))
            await committed(worker, broker.bootstrap)
            await delete("erased-before")
            settings = load_settings(**worker.settings)

            async def phase(name: str) -> None:
                if name == "rebuilt":  # erased in both spaces while the switch is under way
                    await delete("erased-during")
                    await produce(broker.bootstrap, records(worker, [demo("erased-during", 4), demo("kept", 5)]))
                    await committed(worker, broker.bootstrap)

            result = await rescore(settings, model, on_phase=phase)
            assert result.tombstones == 1 and result.carried == 1  # erased-before; old-timer
            store = await current_store(client, model)
            assert store.keys.space == "lp:g1"
            assert math.isclose((await store.view("old-timer", now)).explanation.score, before)
            for lead in ("erased-before", "erased-during"):
                assert (await worker.get(f"/leads/{lead}"))[0] == 404
                late = event("web", "demo_request", now + 10, lead=lead)
                assert (await store.apply([(late, "t:0:0")])).outcomes == [ERASED]
            status, body = await worker.get("/leads/kept")
            assert status == 200 and [c["rule_id"] for c in body["contributions"]] == ["demo_request"] and round(body["score"]) == 50
    finally:
        await client.aclose()
        server.stop()
