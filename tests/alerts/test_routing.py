"""Routing, suppression and SLA reminders of `leadpulse alerts` against a real broker and a real
local HTTP receiver standing in for Slack channels and webhooks. Handoffs of the lifecycle kinds
(closed, recycled, sla_overdue) are produced onto the topic as the contract describes them
(schemas/handoff.schema.json)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from leadpulse.alerts import command as alerts_command
from leadpulse.alerts.config import load_alert_settings
from leadpulse.alerts.routing import DestinationConfig, reasons, route
from leadpulse.alerts.service import AlertService
from leadpulse.alerts.slack import slack_message
from leadpulse.errors import ConfigError
from tests.alerts import test_service as test_alerts
from tests.alerts.test_service import (
    SECRET,
    Receiver,
    committed,
    docs_verifier,
    eventually,
    handoff,
    metric,
    publish,
)

# the receiver standing in for Slack and webhooks, and the alerts service, as tests/alerts/test_service.py has them
receiver = test_alerts.receiver
start_alerts = test_alerts.start_alerts

KIM = {"name": "Kim Lee", "email": "kim@acme.example", "title": "VP Sales", "company": "Acme",
       "domain": "acme.example", "country": "DE", "owner": "rep-7"}


def lead(kind: str = "promoted", stage: str = "sql", who: dict[str, Any] | None = None, grade: str = "B",
         **extra: Any) -> dict[str, Any]:
    h = handoff()
    h["lead_id"] = f"{kind}-{stage}-{h['handoff_id'][-6:]}"
    previous = {"promoted": "mql" if stage == "sql" else "lead", "recycled": "sql", "closed": "opportunity",
                "sla_overdue": "sql"}.get(kind, "sql")
    h.update({"kind": kind, "stage": stage, "previous_stage": previous, "fit_grade": grade, "who": who,
              "crm_url": f"https://crm.example.com/leads/{h['lead_id']}", "do_not_contact": [],
              "outcome": None, "reason": None, "cooldown_until": None, **extra})
    return h


def dest(name: str, url: str, **filters: Any) -> dict[str, Any]:
    return {"name": name, "slack_webhook_url": f"{url}/{name}", **filters}


def routing(receiver: Receiver) -> dict[str, Any]:
    """Sales by territory, marketing, a reminder channel for one rep, and a CRM bridge."""
    u = receiver.url
    return {
        "slack_webhook_url": None, "webhook_url": None,
        "destinations": [
            dest("sales-dach", u, stages=["sql"], who={"country": ["DE", "AT", "CH"]}),
            dest("sales-rest", u, stages="sql", who={"country": ["US", "GB"]}),
            dest("sales-a-grade", u, stages=["sql"], fit_grades=["A"]),
            dest("marketing", u, kinds=["promoted", "recycled"], stages=["mql", "lead"],
                 suppress=["unsubscribed", "spam_reported"]),
            dest("kim-dm", u, kinds=["sla_overdue"], who={"owner": "nobody"}),  # only through owners:
            {"name": "crm-bridge", "webhook_url": f"{u}/bridge", "secret": SECRET,
             "kinds": ["promoted", "closed", "recycled", "sla_overdue"], "suppress": False},
        ],
        "owners": {"rep-7": "kim-dm"},
    }


# --- pure parts ------------------------------------------------------------------------------------


def test_filters_and_suppression_decide_each_destination() -> None:
    ds = [DestinationConfig(**d) for d in routing(Receiver(url="http://r"))["destinations"]]
    owners = {"rep-7": "kim-dm"}
    assert route(lead(who=KIM), ds, owners).deliver == ("sales-dach", "crm-bridge")
    assert route(lead(who={**KIM, "country": "de"}, grade="A"), ds, owners).deliver == (
        "sales-dach", "sales-a-grade", "crm-bridge")  # case-insensitive; every matching destination
    assert route(lead(who={"country": "FR"}), ds, owners).deliver == ("crm-bridge",)
    assert route(lead(stage="mql"), ds, owners).deliver == ("marketing", "crm-bridge")
    assert route(lead(kind="recycled", stage="lead"), ds, owners).deliver == ("marketing", "crm-bridge")
    assert route(lead(kind="demoted", stage="mql"), ds, owners).deliver == ()
    # reminders: the owner's destination, else wherever the filters send them
    assert route(lead(kind="sla_overdue", who=KIM), ds, owners).deliver == ("kim-dm", "crm-bridge")
    assert route(lead(kind="sla_overdue", who={**KIM, "owner": "rep-9"}), ds, owners).deliver == (
        "sales-dach", "crm-bridge")
    # suppressed for sales destinations only
    r = route(lead(who=KIM, do_not_contact=["unsubscribed"]), ds, owners)
    assert (r.deliver, r.suppressed) == (("crm-bridge",), (("sales-dach", "unsubscribed"),))
    assert reasons(lead(kind="closed", stage="customer")) == ("customer",)
    assert reasons(lead(stage="customer", do_not_contact=["unsubscribed"])) == ("customer", "unsubscribed")
    later = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    cooled = lead(kind="recycled", stage="lead", cooldown_until=later)
    assert reasons(cooled) == ("cooldown",)
    assert route(cooled, ds, owners).deliver == ("marketing", "crm-bridge")  # marketing keeps only the opt-outs
    assert reasons(lead(do_not_contact=["spam_reported"])) == ("spam_reported",)
    assert reasons(lead(who=KIM)) == ()
    r = route(lead(stage="mql", do_not_contact=["spam_reported"]), ds, owners)
    assert (r.deliver, r.suppressed) == (("crm-bridge",), (("marketing", "spam_reported"),))


def test_the_routing_config_is_validated_and_errors_name_the_bad_key(tmp_path: Path) -> None:
    def load(alerts: dict[str, Any]) -> Any:
        path = tmp_path / "leadpulse.yaml"
        path.write_text(orjson.dumps({"alerts": alerts}).decode())
        return load_alert_settings(path)

    good = routing(Receiver(url="https://hooks.example.com"))
    del good["slack_webhook_url"], good["webhook_url"]
    assert [d.name for d in load(good).destinations][:2] == ["sales-dach", "sales-rest"]
    cases = [
        ({"kinds": ["promoted", "won"]}, "destinations[1].kinds[1]"),
        ({"fit_grades": ["E"]}, "destinations[1].fit_grades[0]"),
        ({"stage": ["sql"]}, "destinations[1].stage: Extra inputs are not permitted"),
        ({"webhook_url": "https://x.example.com"}, "exactly one of slack_webhook_url and webhook_url"),
        ({"slack_webhook_url": "ftp://x"}, "destinations[1].slack_webhook_url"),
        ({"name": "sales-dach"}, "alerts.destinations[1].name: 'sales-dach' is used twice"),
        ({"who": {"country": [1, {}]}}, "destinations[1].who.country[1]"),
    ]
    for change, message in cases:
        bad = {**good, "destinations": [good["destinations"][0], {**good["destinations"][1], **change}]}
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
            load(bad)
        assert "alerts.destinations[1]" in str(err.value)
    with pytest.raises(ConfigError, match="owners.rep-7: no destination named 'kim'"):
        load({**good, "owners": {"rep-7": "kim"}})
    # --print-config masks every destination's secret
    path = tmp_path / "leadpulse.yaml"
    path.write_text(orjson.dumps({"alerts": good}).decode())
    result = CliRunner().invoke(alerts_command.alerts, ["--config", str(path), "--print-config"])
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output and "hooks.example.com/sales-dach" not in result.output
    assert '"stages"' in result.output


def test_the_slack_text_reads_as_something_a_rep_can_act_on() -> None:
    now = datetime.now(UTC)
    h = lead(who={**KIM, "name": "<!channel> Kim"})
    h["top_signals"][0]["last_occurred_at"] = (now - timedelta(hours=2, minutes=5)).isoformat()
    msg = slack_message(h, now=now.timestamp())
    head = msg["blocks"][0]["text"]["text"]
    assert head.startswith(":arrow_up: *<https://crm.example.com/leads/") and "|&lt;!channel&gt; Kim>*" in head
    assert "VP Sales at Acme" in head and "is now *SQL*" in head
    assert msg["text"].startswith("▲ &lt;!channel&gt; Kim (VP Sales at Acme) is now SQL: score 127")
    body = orjson.dumps(msg).decode()
    for words in ("requested a demo 2 h ago (+50)", "*Email*\\nkim@acme.example", "*Company*\\nAcme",
                  "*Country*\\nDE", "*Owner*\\nrep-7", "Why it is hot", "Open in CRM"):
        assert words in body, words
    reminder = slack_message(lead(kind="sla_overdue", who=KIM))
    assert reminder["text"].startswith("⏰ Reminder: Kim Lee (VP Sales at Acme) is still an unanswered SQL, past the sales SLA")
    assert reminder["blocks"][0]["text"]["text"].startswith(":alarm_clock: *Reminder:* *<https://crm.example.com")
    recycled = slack_message(lead(kind="recycled", stage="lead", outcome="lost", reason="no budget",
                                  cooldown_until="2027-03-01T00:00:00.000Z"))
    assert "went back to nurture (LEAD) after lost: no budget; cool-down until 2027-03-01" in recycled["text"]
    assert slack_message(lead(kind="closed", stage="customer", outcome="won"))["text"].endswith(
        "is now a customer: score 127, fit grade B because requested a demo, looked at pricing, Read the careers page")
    # a handoff of an older worker: no who, the alerts' own CRM template
    old = handoff(lead="acme/kim")
    msg = slack_message(old, "https://crm.example.com/l/{lead_id}")
    assert msg["text"].startswith("▲ acme/kim is now SQL") and "https://crm.example.com/l/acme%2Fkim" in orjson.dumps(msg).decode()
    # a crm_url that would break out of the mrkdwn link is not linked
    assert "evil" not in slack_message({**old, "crm_url": "javascript:evil"})["blocks"][0]["text"]["text"]


# --- against the broker and the receiver -----------------------------------------------------------


@pytest.mark.integration
@pytest.mark.slow  # ≥ 5 s (README, Tests)
async def test_handoffs_go_to_every_matching_destination_and_suppressed_ones_are_counted(
        start_alerts: Callable[..., Awaitable[AlertService]], receiver: Receiver) -> None:
    service = await start_alerts(**routing(receiver))
    later = (datetime.now(UTC) + timedelta(days=60)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    dach, us_a, mql = lead(who=KIM), lead(who={"country": "US"}, grade="A"), lead(stage="mql", who=KIM)
    recycled = lead(kind="recycled", stage="lead", who=KIM, outcome="lost", reason="no budget", cooldown_until=later)
    customer = lead(kind="closed", stage="customer", who=KIM, outcome="won")
    unsubscribed = lead(who={**KIM, "name": "Un Sub"}, do_not_contact=["unsubscribed"])
    spam = lead(who={**KIM, "name": "Spam Rep"}, do_not_contact=["spam_reported"])
    nowhere = lead(kind="demoted", stage="mql")
    sent = [dach, us_a, mql, recycled, customer, unsubscribed, spam, nowhere]
    await publish(service, *sent)
    await eventually(lambda: _equals(committed(service), len(sent)), what="every handoff delivered and committed")

    def ids(path: str) -> list[str]:
        return sorted(orjson.loads(r.body)["handoff_id"] if path == "/bridge" else _id(r.body)
                      for r in receiver.on(path))

    assert ids("/sales-dach") == [_lid(dach)]
    assert ids("/sales-rest") == [_lid(us_a)]
    assert ids("/sales-a-grade") == [_lid(us_a)]
    assert ids("/marketing") == sorted([_lid(mql), _lid(recycled)])
    assert ids("/bridge") == sorted(h["handoff_id"] for h in (dach, us_a, mql, recycled, customer, unsubscribed, spam))
    bridged = next(r for r in receiver.on("/bridge") if orjson.loads(r.body)["handoff_id"] == spam["handoff_id"])
    assert docs_verifier()(SECRET.encode(), bridged.body, bridged.headers)
    assert orjson.loads(bridged.body)["do_not_contact"] == ["spam_reported"]
    assert receiver.on("/kim-dm") == []

    # suppressed, not dropped: counted by destination and reason
    for reason, n in (("unsubscribed", 1), ("spam_reported", 1), ("customer", 0), ("cooldown", 0)):
        assert await metric(service, "leadpulse_alert_suppressed_total", destination="sales-dach", reason=reason) == n
    assert await metric(service, "leadpulse_alert_handoffs_total", kind="demoted", outcome="skipped") == 1
    assert await metric(service, "leadpulse_alert_handoffs_total", kind="promoted", outcome="announced") == 5


@pytest.mark.integration
@pytest.mark.slow  # ≥ 5 s (README, Tests)
async def test_a_sales_channel_that_takes_every_kind_hears_nothing_of_customers_or_cooled_down_leads(
        start_alerts: Callable[..., Awaitable[AlertService]], receiver: Receiver) -> None:
    everything = ["promoted", "advanced", "closed", "recycled", "sla_overdue"]
    service = await start_alerts(slack_webhook_url=None, webhook_url=None,
                                 destinations=[dest("sales", receiver.url, kinds=everything)])
    later = (datetime.now(UTC) + timedelta(days=60)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    customer = lead(kind="closed", stage="customer", who=KIM, outcome="won")
    cooled = lead(kind="recycled", stage="lead", who=KIM, outcome="lost", cooldown_until=later)
    advanced = lead(kind="advanced", stage="sal", who=KIM, outcome="sql_accepted")
    await publish(service, customer, cooled, advanced)
    await eventually(lambda: _equals(committed(service), 3), what="all three handled and committed")
    assert [_id(r.body) for r in receiver.on("/sales")] == [_lid(advanced)]
    assert "moved to *SAL* (sql accepted)" in receiver.on("/sales")[0].body.decode()
    assert await metric(service, "leadpulse_alert_suppressed_total", destination="sales", reason="customer") == 1
    assert await metric(service, "leadpulse_alert_suppressed_total", destination="sales", reason="cooldown") == 1
    assert await metric(service, "leadpulse_alert_handoffs_total", kind="closed", outcome="suppressed") == 1


@pytest.mark.integration
@pytest.mark.slow  # ≥ 5 s (README, Tests)
async def test_sla_reminders_reach_the_owner_else_the_sales_channel(
        start_alerts: Callable[..., Awaitable[AlertService]], receiver: Receiver) -> None:
    service = await start_alerts(**routing(receiver))
    owned = lead(kind="sla_overdue", who=KIM)
    unowned = lead(kind="sla_overdue", who={**KIM, "owner": "rep-9", "name": "Jo Doe"})
    opted_out = lead(kind="sla_overdue", who={**KIM, "owner": "rep-9"}, do_not_contact=["unsubscribed"])
    await publish(service, owned, unowned, opted_out)
    await eventually(lambda: _equals(committed(service), 3), what="reminders handled and committed")
    [dm] = receiver.on("/kim-dm")
    text = orjson.loads(dm.body)["text"]
    assert text.startswith("⏰ Reminder: Kim Lee (VP Sales at Acme) is still an unanswered SQL, past the sales SLA")
    [channel] = receiver.on("/sales-dach")
    assert "Reminder: Jo Doe" in orjson.loads(channel.body)["text"]
    assert await metric(service, "leadpulse_alert_suppressed_total", destination="sales-dach", reason="unsubscribed") == 1
    hooks = [r.headers["X-LeadPulse-Event"] for r in receiver.on("/bridge")]
    assert hooks == ["handoff.sla_overdue"] * 3  # the bridge is not suppressed


@pytest.mark.integration
@pytest.mark.slow  # ≥ 5 s (README, Tests)
async def test_a_pii_minimal_handoff_is_routed_by_what_it_carries(
        start_alerts: Callable[..., Awaitable[AlertService]], receiver: Receiver) -> None:
    """A deployment that names no one (who null) still gets alerts, by lead id, through the
    destinations without who rules; one that keeps only the country is routed by it."""
    service = await start_alerts(**routing(receiver))
    anonymous = lead(who=None, grade="A")
    anonymous["crm_url"] = None
    territory = lead(who={"country": "AT"})
    await publish(service, anonymous, territory)
    await eventually(lambda: _equals(committed(service), 2), what="both handled and committed")
    [a_grade] = receiver.on("/sales-a-grade")
    msg = orjson.loads(a_grade.body)
    assert msg["text"].startswith(f"▲ {anonymous['lead_id']} is now SQL")
    assert "kim" not in a_grade.body.decode().lower() and "*Email*" not in a_grade.body.decode()
    # no crm_url on the record: the alerts' own template (LEADPULSE_CRM_URL_TEMPLATE) still links it
    assert f"https://crm.example.com/leads/{anonymous['lead_id']}" in a_grade.body.decode()
    [dach] = receiver.on("/sales-dach")
    assert _id(dach.body) == _lid(territory) and "*Country*\\nAT" in dach.body.decode()


def _id(slack_body: bytes) -> str:
    """The lead id of a Slack message (in its context line)."""
    context = orjson.loads(slack_body)["blocks"][-1]["elements"][0]["text"]
    return context.split(" · ")[0].removeprefix("lead ")


def _lid(h: dict[str, Any]) -> str:
    return str(h["lead_id"])


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected
