"""The engine and the worker on a real 3-master Redis Cluster (no key crosses a slot)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest
from redis.asyncio import RedisCluster

from leadpulse.embedded import TansuBroker
from leadpulse.model import ScoringModel
from leadpulse.state import LeadStore, connect

from .clustertools import LocalCluster
from .fixtures import DAY, T0, event
from .kafkatools import WorkerProcess, consume_until, produce, running
from .test_worker import journey

pytestmark = pytest.mark.integration


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
    assert view is not None and {"pricing_page", "demo_request", "seniority_exec"} <= {c.rule_id for c in view.contributions}
    top = await store.top(5, T0 + 300)
    assert top[0].lead_id == "c-0" and len(top) == 5  # c-0 has fit points on top of 75
    # Decay takes 75 points below MQL's floor (50) after ~75 days: every shard is swept.
    swept = await store.sweep(T0 + 3000 * DAY)
    assert {t.lead_id for t in swept} == set(leads)  # c-0 too: only its 20 fit points last
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
        status, ready = await worker.get("/readyz")
        assert status == 200 and ready["redis"] is True
