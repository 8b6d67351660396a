"""From events to a rep's Slack channel: a real worker process names the lead on its handoffs
(LEADPULSE_HANDOFF_WHO, LEADPULSE_CRM_URL_TEMPLATE) and records an unsubscribe; `leadpulse
alerts` routes them by territory and suppresses the opted-out lead. Real broker, real Redis, a
real local HTTP receiver for Slack."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from leadpulse.alerts.service import AlertService
from leadpulse.dev.embedded import RedisServer, TansuBroker
from leadpulse.settings import Settings
from tests.alerts import test_service as test_alerts
from tests.alerts.test_service import Receiver, eventually, metric
from tests.support.kafkatools import WorkerProcess, consume_until, produce, running

pytestmark = pytest.mark.integration

# the receiver standing in for Slack and webhooks, and the alerts service, as tests/alerts/test_service.py has them
receiver = test_alerts.receiver
start_alerts = test_alerts.start_alerts

KIM = {"email": "kim@acme.io", "name": "Kim Lee", "job_title": "VP Sales", "company": "Acme",
       "country": "DE", "owner": "rep-7", "seniority": "vp", "employees": 300, "industry": "software",
       "phone": "+49 30 1234"}


def ev(lead: str, i: int, source: str, type_: str, at: int, **extra: Any) -> tuple[str, dict[str, Any]]:
    return source, {"event_id": f"{lead}-{i}", "lead_id": lead, "source": source, "type": type_,
                    "occurred_at": at, **extra}


def hot(lead: str, t: int) -> list[tuple[str, dict[str, Any]]]:
    return [ev(lead, 10 + i, "web", type_, t + i * 1000, **extra) for i, (type_, extra) in enumerate([
        ("page_view", {"properties": {"url": "https://acme.io/pricing"}}),
        ("page_view", {"properties": {"url": "https://acme.io/compare/hubspot"}}),
        ("demo_request", {}),
    ])]


@pytest.mark.slow  # ≥ 5 s (README, Tests)
async def test_a_worker_names_the_lead_and_alerts_route_and_suppress_it(
        broker: TansuBroker, redis_server: RedisServer, tmp_path: Path, receiver: Receiver,
        start_alerts: Callable[..., Awaitable[AlertService]]) -> None:
    worker = WorkerProcess(broker.bootstrap, redis_server.url, tmp_path, handoff_who="name,title=job_title,company,country,owner",
                           crm_url_template="https://crm.example.com/leads/{lead_id}")
    kim, sam = f"kim-{uuid.uuid4().hex[:6]}", f"sam-{uuid.uuid4().hex[:6]}"
    async with running(worker):
        t = int(time.time() * 1000) - 120_000
        # who first, and known to be applied before the hot events: the topics are read in no fixed order
        first = [ev(kim, 0, "profile", "identify", t, traits=KIM),
                 ev(sam, 0, "profile", "identify", t, traits={**KIM, "name": "Sam Doe", "email": "sam@acme.io"}),
                 ev(sam, 1, "email", "unsubscribe", t + 500)]
        await produce(broker.bootstrap, [(worker.topic(s), e["lead_id"].encode(), orjson.dumps(e)) for s, e in first])

        async def applied() -> bool:
            status, lead = await worker.get(f"/leads/{sam}")
            return status == 200 and any(c["rule_id"] == "unsubscribe" for c in lead["contributions"])

        await eventually(applied, what="identify and unsubscribe applied")
        rest = hot(kim, t + 10_000) + hot(sam, t + 10_000)
        await produce(broker.bootstrap, [(worker.topic(s), e["lead_id"].encode(), orjson.dumps(e)) for s, e in rest])
        topic = worker.settings["handoff_topic"]
        records = await consume_until(broker.bootstrap, topic, lambda rs: {orjson.loads(r.value)["lead_id"] for r in rs
                                                                           if orjson.loads(r.value)["stage"] == "sql"} == {kim, sam})
        handoffs = {(h["lead_id"], h["stage"]): h for h in (orjson.loads(r.value) for r in records)}
        k = handoffs[(kim, "sql")]
        assert k["who"] == {"name": "Kim Lee", "title": "VP Sales", "company": "Acme", "country": "DE", "owner": "rep-7"}
        assert k["crm_url"] == f"https://crm.example.com/leads/{kim}" and k["do_not_contact"] == []
        assert handoffs[(sam, "sql")]["do_not_contact"] == ["unsubscribed"]
        assert not any(b"phone" in r.value or b"kim@acme.io" in r.value for r in records)  # not configured

        settings = Settings(kafka_bootstrap=broker.bootstrap, group_id=worker.settings["group_id"], partitions=4,
                            handoff_topic=topic)
        service = await start_alerts(settings, slack_webhook_url=None, webhook_url=None, destinations=[
            {"name": "sales-dach", "slack_webhook_url": receiver.url + "/dach", "stages": ["sql"],
             "who": {"country": ["DE", "AT"]}},
            {"name": "sales-us", "slack_webhook_url": receiver.url + "/us", "stages": ["sql"], "who": {"country": "US"}},
        ])
        await eventually(lambda: _at_least(metric(service, "leadpulse_alert_suppressed_total", destination="sales-dach",
                                                  reason="unsubscribed"), 1), what="sam's alert suppressed")
        await eventually(lambda: receiver.on("/dach"), what="kim's alert in the DACH channel")
        [msg] = [orjson.loads(r.body) for r in receiver.on("/dach")]
        assert msg["text"].startswith("▲ Kim Lee (VP Sales at Acme) is now SQL")
        assert f"<https://crm.example.com/leads/{kim}|Kim Lee>" in msg["blocks"][0]["text"]["text"]
        assert " because " in msg["text"] and "Why it is hot" in orjson.dumps(msg).decode()  # its top signals in words
        assert receiver.on("/us") == []


# The worker decides closed / recycled / sla_overdue (lifecycle.py); the alerts side routes them.
@pytest.mark.slow  # ≥ 5 s (README, Tests)
async def test_the_lifecycle_reaches_the_right_channels_end_to_end(
        broker: TansuBroker, redis_server: RedisServer, tmp_path: Path, receiver: Receiver,
        start_alerts: Callable[..., Awaitable[AlertService]]) -> None:
    """A real worker decides the lifecycle (won, lost, an SQL nobody answered within the 2-day
    SLA) and `leadpulse alerts` routes it: the reminder to the owner's channel, the recycled lead
    to marketing, nothing to sales about the customer or the lead in its cool-down."""
    worker = WorkerProcess(broker.bootstrap, redis_server.url, tmp_path,
                           crm_url_template="https://crm.example.com/leads/{lead_id}")
    tag = uuid.uuid4().hex[:6]
    ann, ben, cat = f"ann-{tag}", f"ben-{tag}", f"cat-{tag}"
    people = {ann: {**KIM, "name": "Ann Ito", "owner": "rep-7"}, ben: {**KIM, "name": "Ben Ode", "owner": "rep-9"},
              cat: {**KIM, "name": "Cat Roe", "owner": "rep-9"}}
    async with running(worker):
        now = int(time.time() * 1000)
        # ann's SQL: its 2-day SLA ran out an hour ago; ben's and cat's are an hour old
        at = {ann: now - 2 * 86_400_000 - 3_600_000, ben: now - 3_600_000, cat: now - 3_600_000}
        first = [ev(lead, 0, "profile", "identify", at[lead], traits=traits) for lead, traits in people.items()]
        await produce(broker.bootstrap, [(worker.topic(s), e["lead_id"].encode(), orjson.dumps(e)) for s, e in first])

        async def known() -> bool:
            return all([(await worker.get(f"/leads/{lead}"))[0] == 200 for lead in people])

        await eventually(known, timeout=120, what="identifies applied")
        rest = [e for lead in people for e in hot(lead, at[lead] + 10_000)]
        await produce(broker.bootstrap, [(worker.topic(s), e["lead_id"].encode(), orjson.dumps(e)) for s, e in rest])
        topic = worker.settings["handoff_topic"]

        def kinds(rs: list[Any]) -> set[tuple[str, str]]:
            return {(orjson.loads(r.value)["lead_id"], orjson.loads(r.value)["kind"]) for r in rs}

        # ben and cat answered in the CRM (after their SQL handoff, so their events are in order)
        await consume_until(broker.bootstrap, topic, lambda rs: {(lead, "promoted") for lead in people} <= kinds(rs),
                            timeout=120)
        answers = [ev(ben, 20, "crm", "won", now - 60_000),
                   ev(cat, 20, "crm", "lost", now - 60_000, properties={"reason": "no budget"})]
        await produce(broker.bootstrap, [(worker.topic(s), e["lead_id"].encode(), orjson.dumps(e)) for s, e in answers])
        records = await consume_until(broker.bootstrap, topic, lambda rs: {
            (ann, "sla_overdue"), (ben, "closed"), (cat, "recycled")} <= kinds(rs), timeout=120)
        overdue = next(orjson.loads(r.value) for r in records if orjson.loads(r.value)["kind"] == "sla_overdue")
        assert overdue["who"]["owner"] == "rep-7" and overdue["lead_id"] == ann
        assert (ben, "sla_overdue") not in kinds(records) and (cat, "sla_overdue") not in kinds(records)

        settings = Settings(kafka_bootstrap=broker.bootstrap, group_id=worker.settings["group_id"], partitions=4,
                            handoff_topic=topic)
        u = receiver.url
        service = await start_alerts(settings, slack_webhook_url=None, webhook_url=None, alerts_max_age=0, destinations=[
            {"name": "sales", "slack_webhook_url": u + "/sales", "kinds": ["promoted", "closed", "recycled", "sla_overdue"],
             "stages": ["sql", "customer", "lead"]},
            {"name": "marketing", "slack_webhook_url": u + "/marketing", "kinds": ["recycled"],
             "suppress": ["unsubscribed", "spam_reported"]},
            {"name": "ann-dm", "slack_webhook_url": u + "/ann", "kinds": ["sla_overdue"], "who": {"owner": "nobody"}},
        ], owners={"rep-7": "ann-dm"})
        await eventually(lambda: receiver.on("/ann") and receiver.on("/marketing") and len(receiver.on("/sales")) >= 3,
                         timeout=120, what="the reminder, the recycle and the three SQLs")
        [reminder] = [orjson.loads(r.body)["text"] for r in receiver.on("/ann")]
        assert reminder.startswith("⏰ Reminder: Ann Ito (VP Sales at Acme) is still an unanswered SQL, past the sales SLA")
        [recycled] = [orjson.loads(r.body)["text"] for r in receiver.on("/marketing")]
        assert recycled.startswith("Cat Roe (VP Sales at Acme) went back to nurture (LEAD) after lost: no budget; cool-down until")
        sales = [orjson.loads(r.body)["text"] for r in receiver.on("/sales")]
        assert sorted(s.split(" (")[0] for s in sales) == ["▲ Ann Ito", "▲ Ben Ode", "▲ Cat Roe"]  # the SQLs only
        for reason in ("customer", "cooldown"):  # counted, not sent
            assert await metric(service, "leadpulse_alert_suppressed_total", destination="sales", reason=reason) == 1


async def _at_least(value: Awaitable[float], n: float) -> bool:
    return await value >= n
