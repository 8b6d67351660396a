"""The worker end to end: a real Tansu broker, a real redis-server, real HTTP, a real process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from leadpulse.dev.embedded import RedisServer, TansuBroker
from leadpulse.events import load_schema

from tests.support.kafkatools import WorkerProcess, committed_all, consume_until, emptied, event_bytes, produce, running, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def worker(broker: TansuBroker, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[WorkerProcess]:
    async with running(WorkerProcess(broker.bootstrap, await emptied(redis_server.url), tmp_path_factory.mktemp("worker"))) as proc:
        yield proc


def journey(lead: str, now: int) -> list[tuple[str, dict[str, Any]]]:
    t = now - 60_000
    steps = [
        ("profile", "identify", {"traits": {"email": f"{lead}@acme.io", "seniority": "vp", "employees": 300,
                                            "industry": "software"}}),
        ("email", "click", {"properties": {"url": "https://acme.io/blog"}}),
        ("webinar", "attended", {"properties": {"minutes": 45}}),
        ("web", "page_view", {"properties": {"url": "https://acme.io/pricing"}}),
        ("web", "page_view", {"properties": {"url": "https://acme.io/compare/hubspot"}}),
        ("web", "demo_request", {}),
    ]
    return [
        (source, {"event_id": f"{lead}-{i}", "lead_id": lead, "source": source, "type": type_,
                  "occurred_at": t + i * 1000, **extra})
        for i, (source, type_, extra) in enumerate(steps)
    ]


async def metric_value(worker: WorkerProcess, name: str, **labels: str) -> float:
    status, text = await worker.get("/metrics")
    assert status == 200
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def test_a_journey_yields_a_handoff_that_matches_the_schema_and_the_api(worker: WorkerProcess, broker: TansuBroker) -> None:
    now = int(time.time() * 1000)
    events = journey("lead-e2e", now)
    await produce(broker.bootstrap, [(worker.topic(s), b"lead-e2e", orjson.dumps(e)) for s, e in events])
    handoff_topic = worker.settings["handoff_topic"]
    records = await consume_until(broker.bootstrap, handoff_topic, lambda rs: any(
        orjson.loads(r.value)["stage"] == "sql" for r in rs))
    handoffs = [orjson.loads(r.value) for r in records]
    validator = jsonschema.Draft202012Validator(load_schema("handoff.schema.json"),
                                                format_checker=jsonschema.FormatChecker())
    for h in handoffs:
        validator.validate(h)
    # The sources' topics are read in no fixed order: the lead may pass MQL on the way or
    # reach SQL in one step, but it climbs, one handoff per stage entered, ending at SQL.
    chain = [(h["kind"], h["previous_stage"], h["stage"]) for h in handoffs]
    assert chain in ([("promoted", "lead", "mql"), ("promoted", "mql", "sql")], [("promoted", "lead", "sql")])
    sql = handoffs[-1]
    # Read before the identify, the web topic makes an SQL with fit unknown (U meets min_grade,
    # docs/scoring.md §5); read after it, with grade A.
    assert sql["lead_id"] == "lead-e2e" and (sql["fit_grade"], sql["completeness"]) in (("A", round(4 / 9, 6)), ("U", 0))
    assert sql["triggered_by_event_id"] in {e["event_id"] for _, e in events}
    assert sql["score"] == pytest.approx(sum(sql["breakdown"].values()), abs=1e-4)
    assert {s["rule_id"] for s in sql["top_signals"]} >= {"demo_request"} or sql["score"] >= 110
    assert all(r.key == b"lead-e2e" for r in records)

    # The SQL handoff can come before the profile topic's identify is applied: read the lead once
    # the worker has committed every event of the journey.
    topics = sorted({worker.topic(s) for s, _ in events})
    await wait_for(lambda: committed_all(broker.bootstrap, worker.settings["group_id"], topics), 120,
                   "the whole journey applied")
    status, lead = await worker.get("/leads/lead-e2e")
    assert status == 200
    assert lead["stage"] == "sql" and lead["fit_grade"] == "A"
    assert lead["completeness"] == round(4 / 9, 6)  # seniority, employees, industry, email_domain of 9
    # Now: at least the score at the crossing (decay over a minute is a hair), at most every
    # point of the journey undecayed: fit 50 (vp 20, 300 employees 15, software 15) + click 5,
    # webinar 20, pricing 25 + 1, comparison 35 + 1, demo 50. Events after the crossing (the
    # topics are read in no fixed order) may have added to it.
    assert sql["score"] - 1 < lead["score"] <= 187 + 1e-6
    assert sum(c["points"] for c in lead["contributions"]) == pytest.approx(lead["score"], abs=1e-3)
    status, top = await worker.get("/leads/top?limit=5")
    assert status == 200 and top["leads"][0]["lead_id"] == "lead-e2e"


async def test_unknown_lead_is_a_json_404_and_bad_queries_are_400(worker: WorkerProcess) -> None:
    status, body = await worker.get("/leads/nobody-here")
    assert status == 404 and body["code"] == "unknown_lead"
    status, body = await worker.get("/leads/top?limit=0")
    assert status == 400 and body["code"] == "bad_limit"


async def test_bad_events_go_to_the_dead_letter_topic_and_the_worker_keeps_going(worker: WorkerProcess, broker: TansuBroker) -> None:
    before = await metric_value(worker, "leadpulse_dlq_total")
    now = int(time.time() * 1000)
    bad = [
        (b"{not json", "invalid_json"),
        (event_bytes(event_id="x1", lead_id="l", source="fax", type="page_view", occurred_at=now), "unknown_source"),
        (event_bytes(event_id="x2", source="web", type="page_view", occurred_at=now), "missing_id"),
        (event_bytes(event_id="x3", lead_id="l", source="email", type="open", occurred_at=now + 86_400_000), "future_timestamp"),
    ]
    good = event_bytes(event_id="after-bad", lead_id="survivor", source="web", type="demo_request", occurred_at=now)
    await produce(broker.bootstrap, [(worker.topic("web"), b"k", value) for value, _ in bad] + [(worker.topic("web"), b"survivor", good)])
    records = await consume_until(broker.bootstrap, worker.settings["dlq_topic"], lambda rs: len(rs) >= len(bad))
    seen = {r.value: dict(r.headers) for r in records}
    for value, reason in bad:
        headers = seen[value]  # the original bytes, untouched
        assert headers["leadpulse.dlq.reason"].decode() == reason
        assert headers["leadpulse.dlq.topic"].decode() == worker.topic("web")
        assert int(headers["leadpulse.dlq.offset"]) >= 0
    status, lead = await _eventually(worker, "/leads/survivor")
    assert status == 200 and lead["score"] == pytest.approx(50, abs=0.01)

    async def all_counted() -> bool:
        # Counted when the broker's acknowledgement reaches the worker, which can be after a
        # reader already sees the dead letters on the topic.
        return await metric_value(worker, "leadpulse_dlq_total") - before >= len(bad)

    await wait_for(all_counted, 30, "the dead letters to be counted", interval=0.1)
    assert await metric_value(worker, "leadpulse_dlq_total") - before == len(bad)
    assert await metric_value(worker, "leadpulse_dlq_total", reason="invalid_json") >= 1


async def test_metrics_count_what_happened(worker: WorkerProcess, broker: TansuBroker) -> None:
    scored_before = await metric_value(worker, "leadpulse_events_total", outcome="scored")
    now = int(time.time() * 1000)
    value = event_bytes(event_id="m-1", lead_id="metered", source="email", type="click", occurred_at=now,
                        properties={"url": "u"})
    await produce(broker.bootstrap, [(worker.topic("email"), b"metered", value)] * 2)  # the second is a duplicate
    await _eventually(worker, "/leads/metered")

    async def both_counted_and_committed() -> bool:
        # The duplicate's batch is counted before its offsets are committed and the commit
        # latency observed: wait for both (run alone, this test has no earlier commit to lean on).
        return (await metric_value(worker, "leadpulse_events_total", outcome="duplicate", source="email") >= 1
                and await metric_value(worker, "leadpulse_commit_latency_seconds_count") >= 1)

    await wait_for(both_counted_and_committed, 30, "the duplicate counted and its batch committed", interval=0.1)
    assert await metric_value(worker, "leadpulse_events_total", outcome="scored") > scored_before
    assert await metric_value(worker, "leadpulse_events_total", source="email", type="click", outcome="duplicate") == 1
    assert await metric_value(worker, "leadpulse_model_info", version="default-2026.12.2") == 1
    assert await metric_value(worker, "leadpulse_event_latency_seconds_count") >= 1
    committed = await metric_value(worker, "leadpulse_commit_latency_seconds_count")
    assert committed >= 1
    # each committed batch timed at every step, observed with the commit latency (one scrape
    # sees both: /metrics is served on the worker's loop, which observes them without awaiting)
    steps = {step: await metric_value(worker, "leadpulse_batch_stage_seconds_count", step=step)
             for step in ("prepare", "queued", "apply", "applied", "publish", "commit")}
    later = await metric_value(worker, "leadpulse_commit_latency_seconds_count")
    assert all(committed <= n <= later for n in steps.values()), (committed, steps, later)
    assert await metric_value(worker, "leadpulse_batch_stage_seconds_sum", step="apply") > 0
    assert await metric_value(worker, "leadpulse_ready") == 1
    # The worker's own account of its work (what `leadpulse bench` measures rows from): it
    # began before it last finished a batch, on both clocks.
    marks = {(at, clock): await metric_value(worker, "leadpulse_work_seconds", at=at, clock=clock)
             for at in ("start", "end") for clock in ("unix", "cpu")}
    assert 0 < marks["start", "unix"] <= marks["end", "unix"], marks
    assert 0 < marks["start", "cpu"] <= marks["end", "cpu"], marks
    status, _ = await worker.get("/healthz")
    assert status == 200


async def _eventually(worker: WorkerProcess, path: str, timeout: float = 30.0) -> tuple[int, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, body = await worker.get(path)
        if status == 200 or time.monotonic() > deadline:
            return status, body
        await asyncio.sleep(0.1)
