"""The shadow model and threshold A/B arms end to end: a real broker, a real redis-server, real
worker processes, real HTTP (docs/scoring.md §9)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import yaml
from redis.asyncio import Redis

from leadpulse import experiments
from leadpulse.dev.embedded import RedisServer, TansuBroker
from leadpulse.events import load_schema
from leadpulse.keys import Keys
from leadpulse.model import parse_model

from tests.support.kafkatools import WorkerProcess, committed_all, consume_until, produce, read_all, running, wait_for
from tests.test_worker import metric_value

pytestmark = pytest.mark.integration


def default_model() -> dict[str, Any]:
    return yaml.safe_load(files("leadpulse").joinpath("default_model.yaml").read_text(encoding="utf-8"))


#: the live model's version, as the default model names it
LIVE_VERSION = default_model()["version"]


def with_mql_bar(data: dict[str, Any], bar: float, version: str) -> dict[str, Any]:
    data = dict(data, version=version)
    data["stages"] = [dict(s, min_score=bar) if s["name"] == "mql" else s for s in data["stages"]]
    return data


def web(lead: str, n: int, type_: str, path: str | None, at: int) -> dict[str, Any]:
    props = {"properties": {"url": f"https://acme.io{path}"}} if path else {}
    return {"event_id": f"{lead}-{n}", "lead_id": lead, "source": "web", "type": type_, "occurred_at": at, **props}


def handoff_validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(load_schema("handoff.schema.json"), format_checker=jsonschema.FormatChecker())


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own: the workers here share the deployment's prefix."""
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.mark.slow  # ≥ 5 s (README, Tests)
async def test_the_shadow_scores_beside_the_live_model_and_only_its_topic_hears_it(
        broker: TansuBroker, redis_server: RedisServer, tmp_path: Path) -> None:
    shadow_yaml = tmp_path / "shadow.yaml"
    candidate = with_mql_bar(default_model(), 30, "shadow-mql30")
    candidate["rules"] = [dict(r, points=2) if r["id"] == "competitor_comparison" else r for r in candidate["rules"]]
    shadow_yaml.write_text(yaml.safe_dump(candidate))
    proc = WorkerProcess(broker.bootstrap, redis_server.url, tmp_path, shadow_model=shadow_yaml)
    proc.settings["shadow_topic"] = f"t{proc.tag}.handoff.shadow"
    now = int(time.time() * 1000) - 60_000
    # The shadow: MQL at 30 (live 60), a competitor comparison worth 2 points (live 35); a page
    # view adds 1 point in both.
    # `agree`: pricing (26), then a demo request (76): over both bars at its second event.
    # `shadow_only`: a demo request, 50 points: over the shadow's bar, under the live one.
    # `live_only`: pricing (26), then a comparison: live 62 (over 60), shadow 29 (under 30).
    events = [web("agree", 0, "page_view", "/pricing", now), web("agree", 1, "demo_request", None, now + 1000),
              web("shadow_only", 0, "demo_request", None, now),
              web("live_only", 0, "page_view", "/pricing", now), web("live_only", 1, "page_view", "/compare/x", now + 1000)]
    async with running(proc) as worker:
        await produce(broker.bootstrap, [(worker.topic("web"), e["lead_id"].encode(), orjson.dumps(e)) for e in events])
        shadow = await consume_until(broker.bootstrap, worker.settings["shadow_topic"], lambda rs: len(rs) >= 2)
        shadow_records = [orjson.loads(r.value) for r in shadow]
        live = await consume_until(broker.bootstrap, worker.settings["handoff_topic"], lambda rs: len(rs) >= 2)
        live_records = [orjson.loads(r.value) for r in live]
        for record in shadow_records + live_records:
            handoff_validator().validate(record)
        assert {(h["lead_id"], h["stage"], h["model_version"]) for h in shadow_records} == {
            ("agree", "mql", "shadow-mql30"), ("shadow_only", "mql", "shadow-mql30")}
        assert {(h["lead_id"], h["stage"], h["model_version"]) for h in live_records} == {
            ("agree", "mql", LIVE_VERSION), ("live_only", "mql", LIVE_VERSION)}
        # Agreement in Prometheus: one decision both made, one each alone, and shadow - live at
        # each: 0 where they agree (same points), 0 for the demo request (same 50 points, another
        # bar), 29 - 62 = -33 for the comparison (the shadow's lead read at that instant).
        await wait_for(lambda: _shadow_counted(worker, 3), 30, "the agreement metrics")
        assert await metric_value(worker, "leadpulse_shadow_decisions_total", kind="promoted", stage="mql", agreement="agree") == 1
        assert await metric_value(worker, "leadpulse_shadow_decisions_total", kind="promoted", stage="mql",
                                  agreement="shadow_only") == 1
        assert await metric_value(worker, "leadpulse_shadow_decisions_total", kind="promoted", stage="mql",
                                  agreement="live_only") == 1
        assert await metric_value(worker, "leadpulse_shadow_score_delta_count") == 3
        assert await metric_value(worker, "leadpulse_shadow_score_delta_bucket", le="0.001") == 3
        assert await metric_value(worker, "leadpulse_shadow_score_delta_bucket", le="-0.001") == 1
        assert await metric_value(worker, "leadpulse_shadow_score_delta_bucket", le="-25.0") == 1
        assert await metric_value(worker, "leadpulse_shadow_score_delta_bucket", le="-50.0") == 0
        assert await metric_value(worker, "leadpulse_shadow_score_delta_signed_sum") == pytest.approx(-33.0, abs=0.05)
        assert await metric_value(worker, "leadpulse_shadow_handoffs_total", stage="mql") == 2
        assert await metric_value(worker, "leadpulse_shadow_failures_total") == 0
        # Live reads are the live model's: the shadow-only lead is still a lead at 50 points.
        status, body = await worker.get("/leads/shadow_only")
        assert status == 200 and body["stage"] == "lead" and body["model_version"] == LIVE_VERSION
        assert body["score"] == pytest.approx(50, abs=0.01)
        status, top = await worker.get("/leads/top")
        assert status == 200 and sorted(lead["lead_id"] for lead in top["leads"]) == ["agree", "live_only"]
    # The shadow's keys are in its own space, which no live pattern matches.
    redis = Redis.from_url(redis_server.url)
    try:
        root = Keys()
        assert await redis.exists(root.in_space(root.shadow_space).lead("shadow_only").state)
        live_keys = [k for pattern in root.space_patterns() async for k in redis.scan_iter(match=pattern)]
        assert live_keys and not [k for k in live_keys if b":shadow:" in k]
    finally:
        await redis.aclose()
    # Nothing of the shadow's reached the live topic, ever.
    everything = [orjson.loads(r.value) for r in await read_all(broker.bootstrap, proc.settings["handoff_topic"])]
    assert {h["model_version"] for h in everything} == {LIVE_VERSION}


async def _shadow_counted(worker: WorkerProcess, n: int) -> bool:
    return await metric_value(worker, "leadpulse_shadow_decisions_total") >= n


def arm_model() -> dict[str, Any]:
    data = dict(default_model(), version="ab-mql")
    data["experiments"] = [{"name": "mql_bar", "arms": [
        {"name": "control", "share": 50},
        {"name": "low", "share": 50, "stages": {"mql": {"min_score": 30}}},
    ]}]
    return data


@pytest.mark.slow  # ≥ 5 s (README, Tests)
async def test_arms_have_their_own_bars_and_every_handoff_names_its_arm(
        broker: TansuBroker, redis_server: RedisServer, tmp_path: Path) -> None:
    model_yaml = tmp_path / "ab.yaml"
    model_yaml.write_text(yaml.safe_dump(arm_model()))
    split = experiments.split(parse_model(model_yaml.read_text()))
    assert split is not None
    leads = [f"ab-lead-{i}" for i in range(16)]
    arms = {lead: split.arm_of(lead) for lead in leads}
    assert set(arms.values()) == {"mql_bar/control", "mql_bar/low"}  # both arms are tried
    proc = WorkerProcess(broker.bootstrap, redis_server.url, tmp_path, model=model_yaml)
    now = int(time.time() * 1000) - 60_000
    # 50 points each (a demo request), then 50 more for the control-arm leads' second stage:
    # every lead passes its arm's MQL bar; only the low arm passes it at 50.
    events = [web(lead, 0, "demo_request", None, now) for lead in leads]
    async with running(proc) as worker:
        await produce(broker.bootstrap, [(worker.topic("web"), e["lead_id"].encode(), orjson.dumps(e)) for e in events])
        low = [lead for lead, arm in arms.items() if arm == "mql_bar/low"]
        records = await consume_until(broker.bootstrap, worker.settings["handoff_topic"], lambda rs: len(rs) >= len(low))
        handoffs = [orjson.loads(r.value) for r in records]
        for h in handoffs:
            handoff_validator().validate(h)
        assert sorted(h["lead_id"] for h in handoffs) == sorted(low)
        assert all(h["arm"] == "mql_bar/low" and h["threshold"] == 30 and h["stage"] == "mql" for h in handoffs)
        # The control arm's leads stay under their bar of 60; a read says so, once every event is
        # applied (a partition holding only control leads yields no handoff to wait for).
        await wait_for(lambda: committed_all(broker.bootstrap, worker.settings["group_id"], [worker.topic("web")]),
                       120, "every demo request applied")
        for lead, arm in arms.items():
            status, body = await worker.get(f"/leads/{lead}")
            assert status == 200 and body["stage"] == ("mql" if arm == "mql_bar/low" else "lead"), (lead, arm, body)
        # A pricing visit takes every control lead to 75: over 60, promoted, arm named.
        control = [lead for lead, arm in arms.items() if arm == "mql_bar/control"]
        more = [web(lead, 1, "page_view", "/pricing", now + 1000) for lead in control]
        await produce(broker.bootstrap, [(worker.topic("web"), e["lead_id"].encode(), orjson.dumps(e)) for e in more])
        records = await consume_until(broker.bootstrap, worker.settings["handoff_topic"],
                                      lambda rs: len(rs) >= len(low) + len(control))
        first = {h["handoff_id"] for h in handoffs}  # the partitions' records interleave in no fixed order
        later = [h for h in map(orjson.loads, (r.value for r in records)) if h["handoff_id"] not in first]
        assert sorted(h["lead_id"] for h in later) == sorted(control)
        assert all(h["arm"] == "mql_bar/control" and h["threshold"] == 60 for h in later)


async def test_erasing_a_lead_erases_it_in_the_shadow_space_too(redis_server: RedisServer) -> None:
    from leadpulse import erasure, layout
    from leadpulse.model import load_model
    from leadpulse.state import LeadStore

    from tests.support.fixtures import T0, event

    redis = Redis.from_url(redis_server.url)
    try:
        model = load_model()
        live = LeadStore(redis, model)
        shadow = LeadStore(redis, model, Keys().in_space(Keys().shadow_space))
        batch = [(event("web", "demo_request", T0, lead="gone", traits={}), "web:0:0")]
        await live.apply(batch, now=T0)
        await shadow.apply(batch, now=T0)
        assert await shadow.view("gone", T0) is not None
        assert await erasure.erase(live, "gone")
        assert await redis.get(shadow.keys.lead("gone").state) == layout.TOMBSTONE
        # The tombstone refuses the lead's events in the shadow too.
        again = await shadow.apply([(event("web", "demo_request", T0 + 1, lead="gone"), "web:0:1")], now=T0 + 1)
        assert again.outcomes == ["erased"] and await shadow.view("gone", T0 + 1) is None
    finally:
        await redis.aclose()


async def test_crm_moves_are_compared_by_their_lifecycle_stage_names(redis_server: RedisServer) -> None:
    from leadpulse.metrics import Metrics
    from leadpulse.model import load_model
    from leadpulse.shadow import Shadow
    from leadpulse.state import LeadStore

    from tests.support.fixtures import T0, event

    redis = Redis.from_url(redis_server.url)
    try:
        model = load_model()
        live = LeadStore(redis, model)
        metrics = Metrics()
        shadow = Shadow(live, parse_model(yaml.safe_dump(dict(default_model(), version="shadow-crm"))), None,
                        "leads.handoff.shadow", metrics)
        # sales accepts a lead: both models move it into `sal`, a lifecycle stage (model.stage_names)
        batch = [(event("crm", "sql_accepted", T0, lead="crm-1", event_id="crm-ev-1"), "crm:0:0")]
        result, shadowed = await shadow.beside(live.apply(batch, T0), batch, T0)
        assert shadowed.result is not None
        assert [(t.kind, model.stage_names[t.to_stage]) for t in result.transitions] == [("advanced", "sal")]
        await shadow.compare(result.transitions, shadowed.result.transitions)
        agreed = metrics.registry.get_sample_value(
            "leadpulse_shadow_decisions_total", {"kind": "advanced", "stage": "sal", "agreement": "agree"})
        assert agreed == 1
    finally:
        await redis.aclose()


async def test_shadow_handoffs_name_the_lead_only_as_the_live_ones_may(
        broker: TansuBroker, redis_server: RedisServer) -> None:
    import asyncio
    import uuid

    from aiokafka import AIOKafkaProducer

    from leadpulse.metrics import Metrics
    from leadpulse.model import load_model
    from leadpulse.shadow import Shadow
    from leadpulse.state import LeadStore
    from leadpulse.who import Who

    from tests.support.fixtures import T0, event

    redis = Redis.from_url(redis_server.url)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    topic = f"shadow-who-{uuid.uuid4().hex[:8]}"
    try:
        live = LeadStore(redis, load_model())
        # LEADPULSE_HANDOFF_WHO=name: the deployment allows the name on its handoff topics, not the email
        shadow = Shadow(live, parse_model(yaml.safe_dump(with_mql_bar(default_model(), 30, "shadow-who"))), producer,
                        topic, Metrics(), Who({"name": "name"}))
        batch = [(event("profile", "identify", T0, lead="who-1", traits={"name": "Ada Doe", "email": "ada@acme.io"}), "p:0:0"),
                 (event("web", "demo_request", T0 + 1, lead="who-1"), "w:0:0")]  # 50 points: over the shadow's bar (30)
        result, shadowed = await shadow.beside(live.apply(batch, T0 + 1), batch, T0 + 1)
        await asyncio.gather(*[await s for s in shadow.sends(shadowed, result)])
        (record,) = [orjson.loads(r.value) for r in await consume_until(broker.bootstrap, topic, lambda rs: len(rs) >= 1)]
        handoff_validator().validate(record)
        assert (record["lead_id"], record["stage"], record["who"]) == ("who-1", "mql", {"name": "Ada Doe"})
        assert b"ada@acme.io" not in orjson.dumps(record)
    finally:
        await producer.stop()
        await redis.aclose()
