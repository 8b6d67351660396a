"""CRM outcomes end to end through the real worker (a real Tansu broker, a real redis-server, real
HTTP): events.crm in → the lead moves, handoffs of the lifecycle kinds, one sla_overdue for an SQL
left unanswered, outcome records on leads.outcomes that validate, and `leadpulse report` reading
that topic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from leadpulse.dev.embedded import RedisServer, TansuBroker
from leadpulse.events import load_schema

from .support.kafkatools import (
    WorkerProcess,
    consume_until,
    emptied,
    produce,
    read_all,
    running,
    wait_for,
)
from .test_worker import metric_value

pytestmark = pytest.mark.integration
DAY = 86_400_000


@pytest.fixture(scope="module")
async def worker(broker: TansuBroker, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[WorkerProcess]:
    async with running(WorkerProcess(broker.bootstrap, await emptied(redis_server.url), tmp_path_factory.mktemp("lifecycle"))) as proc:
        yield proc


def to_sql(lead: str, t: int) -> list[tuple[str, dict[str, Any]]]:
    """Events that take a lead of the default model to sql (fit A, demo, pricing, comparison)."""
    steps = [
        ("profile", "identify", {"traits": {"seniority": "vp", "employees": 300, "industry": "software"}}),
        ("web", "demo_request", {}),
        ("web", "page_view", {"properties": {"url": "https://acme.io/pricing"}}),
        ("web", "page_view", {"properties": {"url": "https://acme.io/compare/hubspot"}}),
    ]
    return [(source, {"event_id": f"{lead}-{i}", "lead_id": lead, "source": source, "type": type_,
                      "occurred_at": t + i * 1000, **extra}) for i, (source, type_, extra) in enumerate(steps)]


def crm(lead: str, outcome: str, t: int, event_id: str, **properties: Any) -> tuple[str, dict[str, Any]]:
    return "crm", {"event_id": event_id, "lead_id": lead, "source": "crm", "type": outcome, "occurred_at": t,
                   "properties": properties}


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(load_schema(name), format_checker=jsonschema.FormatChecker())


async def send(worker: WorkerProcess, broker: TansuBroker, events: list[tuple[str, dict[str, Any]]]) -> None:
    await produce(broker.bootstrap, [(worker.topic(s), e["lead_id"].encode(), orjson.dumps(e)) for s, e in events])


async def test_outcomes_move_leads_publish_handoffs_and_records_and_feed_the_report(
        worker: WorkerProcess, broker: TansuBroker, tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    t = now - 10 * 60_000
    # a lead's events and its CRM outcome share no partition order (different topics): the
    # outcomes go in once every lead is an SQL
    await send(worker, broker, [*to_sql("acc", t), *to_sql("rej", t), *to_sql("win", t),
                                *to_sql("slow", now - 3 * DAY)])
    handoff_topic, outcomes_topic = worker.settings["handoff_topic"], worker.settings["outcomes_topic"]

    def kinds(records: list[Any]) -> list[tuple[str, str, str]]:
        return [(h["lead_id"], h["kind"], h["stage"]) for h in (orjson.loads(r.value) for r in records)]

    await consume_until(broker.bootstrap, handoff_topic, lambda rs: sum(
        1 for _, kind, stage in kinds(rs) if kind == "promoted" and stage == "sql") == 4)
    await send(worker, broker, [
        crm("acc", "sql_accepted", t + 60_000, "c-acc"),
        crm("rej", "sql_rejected", t + 60_000, "c-rej", reason="no budget"),
        crm("win", "sql_accepted", t + 60_000, "c-win-1"),
        crm("win", "opportunity_created", t + 120_000, "c-win-2"),
        crm("win", "won", t + 180_000, "c-win-3"),
        crm("ghost", "sql_accepted", t, "c-ghost"),  # a lead no event ever named: kept
    ])
    expected = {("acc", "advanced", "sal"), ("rej", "recycled", "lead"), ("win", "advanced", "sal"),
                ("win", "advanced", "opportunity"), ("win", "closed", "customer"), ("ghost", "advanced", "sal"),
                ("slow", "sla_overdue", "sql")}
    records = await consume_until(broker.bootstrap, handoff_topic, lambda rs: expected <= set(kinds(rs)))
    handoffs = [orjson.loads(r.value) for r in records]
    assert expected <= set(kinds(records))
    check = validator("handoff.schema.json")
    for h in handoffs:
        check.validate(h)
    recycled = next(h for h in handoffs if h["kind"] == "recycled")
    assert (recycled["outcome"], recycled["reason"], recycled["previous_stage"]) == ("sql_rejected", "no budget", "sql")
    assert recycled["cooldown_until"] is not None and recycled["triggered_by_event_id"] == "c-rej"
    # the SLA: one sla_overdue for the SQL left unanswered, none for the others
    assert [h["lead_id"] for h in handoffs if h["kind"] == "sla_overdue"] == ["slow"]

    # reads show the lifecycle stage; /leads/top holds none of the leads sales or the CRM moved
    stages = {lead: (await worker.get(f"/leads/{lead}"))[1] for lead in ("acc", "rej", "win", "ghost", "slow")}
    assert {lead: v["stage"] for lead, v in stages.items()} == {
        "acc": "sal", "rej": "lead", "win": "customer", "ghost": "sal", "slow": "sql"}
    assert stages["rej"]["cooldown_until"] == recycled["cooldown_until"] and stages["win"]["score"] > 100
    status, top = await worker.get("/leads/top?limit=50")
    # (the session's Redis also holds other tests' leads: look at this test's own)
    assert status == 200 and [v["lead_id"] for v in top["leads"] if v["lead_id"] in stages] == ["slow"]

    # one record per outcome on leads.outcomes, each the lead as it stood
    out = await consume_until(broker.bootstrap, outcomes_topic, lambda rs: len(rs) >= 6)
    outcomes = {o["outcome_id"]: o for o in (orjson.loads(r.value) for r in out)}
    check = validator("outcome.schema.json")
    for o in outcomes.values():
        check.validate(o)
    by_event = {o["event_id"]: o for o in outcomes.values()}
    assert set(by_event) == {"c-acc", "c-rej", "c-win-1", "c-win-2", "c-win-3", "c-ghost"}
    acc = by_event["c-acc"]
    assert (acc["stage"], acc["stage_after"], acc["model_version"]) == ("sql", "sal", stages["acc"]["model_version"])
    assert acc["sql_at"] is not None and acc["score"] >= 110 and acc["last_handoff_id"] in {h["handoff_id"] for h in handoffs}
    assert (by_event["c-win-3"]["stage"], by_event["c-win-3"]["stage_after"]) == ("opportunity", "customer")
    assert (by_event["c-ghost"]["score"], by_event["c-ghost"]["stage"]) == (0, "lead")
    assert by_event["c-rej"]["reason"] == "no budget"

    # redelivered outcomes (the same event ids) change nothing and publish nothing new
    await send(worker, broker, [crm("acc", "sql_accepted", t + 60_000, "c-acc"),
                                crm("win", "won", t + 180_000, "c-win-3"),
                                crm("marker", "lost", t, "c-marker")])
    out = await consume_until(broker.bootstrap, outcomes_topic, lambda rs: any(
        orjson.loads(r.value)["event_id"] == "c-marker" for r in rs))
    assert sorted(orjson.loads(r.value)["event_id"] for r in out) == sorted([*by_event, "c-marker"])
    handoffs_after = await read_all(broker.bootstrap, handoff_topic)
    assert len([h for h in kinds(handoffs_after) if h[0] in ("acc", "win")]) == len(
        [h for h in kinds(records) if h[0] in ("acc", "win")])

    # the sales SLA is measured: three SQLs answered (acc, rej, win), each within the hour
    async def answered() -> bool:
        return await metric_value(worker, "leadpulse_sla_answer_seconds_count") == 3
    await wait_for(answered, 30, "three SLA answers measured")
    assert await metric_value(worker, "leadpulse_sla_answer_seconds_bucket", le="3600.0") == 3
    assert await metric_value(worker, "leadpulse_sales_sla_seconds") == 2 * 86400
    assert await metric_value(worker, "leadpulse_outcomes_total") == 7

    # `leadpulse report` reads the outcomes (and handoff) topics by default
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADPULSE_")}
    env.update({f"LEADPULSE_{k.upper()}": str(v) for k, v in worker.settings.items()})
    done = subprocess.run([sys.executable, "-m", "leadpulse", "report", "--out", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    whole = report["all"]
    assert whole["acceptance"]["accepted"] == 3 and whole["acceptance"]["rejected"] == 1
    assert whole["acceptance"]["rejection_reasons"] == [{"reason": "no budget", "count": 1}]
    funnel = {step["step"]: step["leads"] for step in whole["funnel"]}
    assert funnel["won"] == 1 and funnel["sal"] >= 3
    assert whole["sla"]["sqls"] >= 4 and whole["sla"]["open_past_sla"] >= 1  # "slow"
