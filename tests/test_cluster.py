"""The engine and the worker on a real 3-master Redis Cluster (no key crosses a slot)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import RedisCluster
from redis.crc import key_slot

from leadpulse.admin import forget
from leadpulse.collector.app import Collector
from leadpulse.collector.config import CollectorSettings
from leadpulse.dev.embedded import TansuBroker
from leadpulse.model import ScoringModel
from leadpulse.settings import Settings
from leadpulse.redisconn import connect
from leadpulse.state import LeadStore

from tests.support.clustertools import LocalCluster
from tests.support.fixtures import DAY, T0, event
from tests.support.kafkatools import WorkerProcess, consume_until, produce, running, wait_for
from .test_worker import journey

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def is_ready(worker: WorkerProcess) -> bool:
    """/readyz says ready with Redis up (its probe refreshes every 2 s: one slow probe is a 503)."""
    status, ready = await worker.get("/readyz")
    return status == 200 and ready["redis"] is True


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path_factory.mktemp("cluster")).start()
    yield local
    local.stop()


@pytest.fixture
async def cluster_store(cluster: LocalCluster, model: ScoringModel) -> AsyncIterator[LeadStore]:
    client = connect(cluster.url, cluster=True)
    assert isinstance(client, RedisCluster)
    await client.flushall()
    yield LeadStore(client, model)
    await client.aclose()


async def test_engine_on_a_cluster_scores_merges_sweeps_and_ranks(cluster_store: LeadStore) -> None:
    store = cluster_store
    assert store.keys.cluster
    leads = [f"c-{i}" for i in range(40)]  # spread over many slots and all three masters
    batch = [event("web", "demo_request", T0 + i, lead=lead) for i, lead in enumerate(leads)]
    batch += [event("web", "page_view", T0 + 50, lead=lead, url="/pricing") for lead in leads[1:]]
    batch += [event("web", "page_view", T0 + 100, lead=None, anon="cookie-c", url="/pricing")]
    result = await store.apply([(e, f"t:0:{i}") for i, e in enumerate(batch)])
    assert result.outcomes == ["scored"] * 79 + ["anonymous"]
    assert len(result.transitions) == 39  # c-1 … c-39 reach MQL (75 points) in this batch
    link = event("profile", "identify", T0 + 200, lead="c-0", anon="cookie-c", traits={"seniority": "vp"})
    await store.apply([(link, "t:0:99")])
    view = await store.view("c-0", T0 + 200)
    assert view is not None and {"pricing_page", "demo_request", "seniority_exec"} <= {c.rule_id for c in view.explanation.contributions}
    top = await store.top(5, T0 + 300)
    assert top[0].lead_id == "c-0" and len(top) == 5  # c-0 has fit points on top of 75
    # Decay takes 75 points below MQL's floor (50) after ~75 days: every shard is swept.
    due_at: list[float] = []  # what the sweep read, for its metrics
    swept = await store.sweep(T0 + 3000 * DAY, due_at=due_at)
    assert {t.lead_id for t in swept} == set(leads)  # c-0 too: only its 20 fit points last
    assert len(due_at) == len(leads) and T0 < min(due_at) and max(due_at) < T0 + 3000 * DAY
    await store.ack(swept)
    assert await store.sweep(T0 + 3000 * DAY) == []


async def test_worker_end_to_end_on_a_cluster(broker: TansuBroker, cluster: LocalCluster, tmp_path: Path) -> None:
    worker = WorkerProcess(broker.bootstrap, cluster.url, tmp_path, redis_cluster="true")
    async with running(worker):
        now = int(time.time() * 1000)
        events = journey("lead-cluster", now)
        await produce(broker.bootstrap, [(worker.topic(s), b"lead-cluster", orjson.dumps(e)) for s, e in events])
        records = await consume_until(broker.bootstrap, worker.settings["handoff_topic"],
                                      lambda rs: any(orjson.loads(r.value)["stage"] == "sql" for r in rs))
        # The sources' topics are read in no fixed order: it may pass MQL or reach SQL in one step.
        assert [orjson.loads(r.value)["stage"] for r in records] in (["mql", "sql"], ["sql"])
        status, lead = await worker.get("/leads/lead-cluster")
        assert status == 200 and lead["stage"] == "sql"
        status, top = await worker.get("/leads/top?limit=3")
        assert status == 200 and top["leads"][0]["lead_id"] == "lead-cluster"
        await wait_for(lambda: is_ready(worker), 60, "/readyz 200 with Redis up")  # a probe may time out once
        # Redis memory is sampled on every primary (one INFO each, on a timer).
        primaries = {f"127.0.0.1:{node.port}" for node in cluster.nodes}

        async def every_primary_sampled() -> bool:
            _, text = await worker.get("/metrics")
            return primaries == {s.labels["node"] for f in text_string_to_metric_families(text) for s in f.samples
                                 if s.name == "leadpulse_redis_used_memory_bytes" and s.value > 0}

        await wait_for(every_primary_sampled, 60, "the memory of every primary sampled")


BRACE_LEADS = ("}x", "{x}", "a{b}c")


async def test_ids_with_braces_through_the_topics_and_the_collector_on_a_cluster(
        broker: TansuBroker, cluster: LocalCluster, tmp_path: Path) -> None:
    # A lead id starting with "}" once gave its keys an empty hash tag: EVALSHA failed with
    # CROSSSLOT and the worker exited. keys.py puts such ids in the tag encoded.
    worker = WorkerProcess(broker.bootstrap, cluster.url, tmp_path, redis_cluster="true")
    async with running(worker):
        now = int(time.time() * 1000)
        items = [(worker.topic(s), lead.encode(), orjson.dumps(e)) for lead in BRACE_LEADS for s, e in journey(lead, now)]
        # a visitor whose id starts with "}" too, linked to a lead by identify
        visit = {"event_id": "anon-visit", "anonymous_id": "}cookie", "source": "web", "type": "page_view",
                 "occurred_at": now - 120_000, "properties": {"url": "https://acme.io/customers/x"}}
        link = {"event_id": "anon-link", "lead_id": "a{b}c", "anonymous_id": "}cookie", "source": "profile",
                "type": "identify", "occurred_at": now - 110_000, "traits": {}}
        await produce(broker.bootstrap, [(worker.topic("web"), b"}cookie", orjson.dumps(visit)), *items])
        await produce(broker.bootstrap, [(worker.topic("profile"), b"}cookie", orjson.dumps(link))])
        records = await consume_until(broker.bootstrap, worker.settings["handoff_topic"], lambda rs: {
            orjson.loads(r.value)["lead_id"] for r in rs if orjson.loads(r.value)["stage"] == "sql"} == set(BRACE_LEADS))
        assert {orjson.loads(r.value)["lead_id"] for r in records if orjson.loads(r.value)["stage"] == "sql"} == set(BRACE_LEADS)

        async def merged() -> bool:
            status, lead = await worker.get("/leads/" + quote("a{b}c", safe=""))
            return status == 200 and "case_study" in {c["rule_id"] for c in lead["contributions"]}

        await wait_for(merged, 60, "the visitor's page view to merge into a{b}c")
        for lead in BRACE_LEADS:
            status, body = await worker.get("/leads/" + quote(lead, safe=""))
            assert status == 200 and body["stage"] == "sql", (lead, body)

        # The same through the collector: Segment userId / anonymousId with braces.
        collector = Collector(Settings(kafka_bootstrap=broker.bootstrap, partitions=4, topic_prefix=worker.settings["topic_prefix"]),
                              CollectorSettings(write_keys="wk-braces", collector_port=0))
        await collector.start()
        try:
            messages = [
                {"type": "page", "anonymousId": "}seg-anon", "messageId": "seg-1", "properties": {"url": "https://acme.io/pricing"}},
                {"type": "identify", "userId": "}seg", "anonymousId": "}seg-anon", "messageId": "seg-2",
                 "traits": {"seniority": "vp"}},
                {"type": "track", "userId": "}seg", "event": "Demo Requested", "messageId": "seg-3"},
            ]
            auth = {"Authorization": "Basic " + base64.b64encode(b"wk-braces:").decode()}
            async with aiohttp.ClientSession() as http:
                deadline = time.monotonic() + 30
                while True:  # 503 until the collector's producer is connected
                    async with http.post(collector.url + "/v1/batch", json={"batch": messages}, headers=auth) as resp:
                        if resp.status == 200 or time.monotonic() > deadline:
                            break
                    await asyncio.sleep(0.2)
                assert resp.status == 200

            async def seg_scored() -> bool:
                status, lead = await worker.get("/leads/" + quote("}seg", safe=""))
                rules = {c["rule_id"] for c in lead["contributions"]} if status == 200 else set()
                return {"pricing_page", "demo_request", "seniority_exec"} <= rules

            await wait_for(seg_scored, 60, "the collector's events for }seg to be scored")
        finally:
            await collector.stop()
        await wait_for(lambda: is_ready(worker), 60, "/readyz 200 with Redis up")
        assert worker.proc is not None and worker.proc.poll() is None


async def test_erasure_on_a_cluster_removes_links_in_other_slots(cluster_store: LeadStore) -> None:
    # The lead's keys and its visitors' links live in different slots (and nodes): erase.lua
    # works in the lead's, unlink.lua in each visitor's.
    store = cluster_store
    cookies = ["{c}-1", "c-2", "}c-3"]
    await store.apply([(event("web", "page_view", T0, lead=None, anon=c, url="/pricing"), f"t:0:{i}")
                       for i, c in enumerate(cookies)])
    links = [event("profile", "identify", T0 + 1 + i, lead="}gone", anon=c, traits={}) for i, c in enumerate(cookies)]
    await store.apply([(e, f"t:1:{i}") for i, e in enumerate(links)])
    assert len({key_slot(store.keys.anon(c).alias.encode()) for c in cookies} | {key_slot(store.keys.lead("}gone").state.encode())}) == 4
    assert await forget(store, "}gone") is True
    for c in cookies:
        assert not await store.redis.exists(*store.keys.anon(c))
    later = [event("web", "page_view", T0 + 10 + i, lead=None, anon=c, url="/pricing") for i, c in enumerate(cookies)]
    assert (await store.apply([(e, f"t:2:{i}") for i, e in enumerate(later)])).outcomes == ["anonymous"] * 3
    assert (await store.apply([(links[0], "t:1:0")])).outcomes == ["erased"]
    assert await store.view("}gone", T0 + 20) is None
    assert not await store.redis.exists(*store.keys.anon(cookies[0]))
