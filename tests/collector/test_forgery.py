"""Forgery through public write keys: what a browser key may send, derived traits that cannot be
sent, event times that cannot spend an award at no cost, ids that cannot disguise a log line.
Unit tests for the pure parts; the rest against a real broker, Redis, worker and collector."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from leadpulse.collector.app import Collector
from leadpulse.collector.config import load_collector_settings
from leadpulse.dev.embedded import RedisServer, TansuBroker
from leadpulse.engine import derived_traits
from leadpulse.errors import ConfigError
from leadpulse.collector.segment import Context, map_message
from leadpulse.collector.writekeys import TokenBucket, parse_write_keys

from tests.support.kafkatools import WorkerProcess, consume_until, produce, running, wait_for
from .test_app import basic, post, ready, records_by_topic, start_collector

__all__ = ["start_collector"]  # the fixture, shared with test_app.py
Start = Callable[..., Awaitable[Collector]]
BROWSER, SERVER = "wk_browser_public", "wk_server_secret"


# --- the pure parts -------------------------------------------------------------------------


def test_email_domain_is_derived_from_email_only() -> None:
    assert derived_traits({"email": "Kim@GMAIL.com ", "email_domain": "acme.io"})["email_domain"] == "gmail.com"
    assert "email_domain" not in derived_traits({"email_domain": "acme.io", "seniority": "vp"})
    msg = {"type": "identify", "userId": "u", "messageId": "m", "timestamp": "2026-09-21T14:13:20Z",
           "traits": {"email": "kim@gmail.com", "email_domain": "acme.io", "emailDomain": "acme.io"}}
    assert map_message(msg, Context(received_ms=1_790_000_000_000)).event["traits"] == {"email": "kim@gmail.com"}


def test_write_keys_plain_structured_and_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEADPULSE_CONFIG", raising=False)
    monkeypatch.delenv("LEADPULSE_WRITE_KEYS", raising=False)
    plain = parse_write_keys("a, b,")
    assert [(k.key.get_secret_value(), k.name, k.kind, k.allowed_sources) for k in plain] == [
        ("a", "key1", "server", ("web", "email", "webinar", "profile", "crm")),
        ("b", "key2", "server", ("web", "email", "webinar", "profile", "crm"))]
    config = tmp_path / "c.yaml"
    config.write_text("collector:\n  write_keys:\n    - {key: wk_site, name: site, kind: browser}\n"
                      "    - {key: wk_site2, kind: browser, types: [profile/identify]}\n"
                      "    - {key: wk_crm, kind: server, sources: [crm], rate_limit: 50, rate_burst: 100}\n"
                      "    - wk_plain\n")
    site, site2, crm, legacy = load_collector_settings(config).write_keys
    assert (site.name, site.allows("web", "page_view"), site.allows("email", "spam_report")) == ("site", True, False)
    assert not site.allows("profile", "identify") and site2.allows("profile", "identify")
    assert not site2.allows("profile", "alias") and not site2.allows("crm", "won")
    assert crm.allows("crm", "won") and not crm.allows("web", "page_view") and crm.rate_limit == 50
    assert legacy.kind == "server" and legacy.name == "key4" and legacy.allows("email", "unsubscribe")
    monkeypatch.setenv("LEADPULSE_WRITE_KEYS", '[{"key": "wk_env", "kind": "browser"}, "wk_env2"]')
    assert [k.kind for k in load_collector_settings().write_keys] == ["browser", "server"]
    assert site.masked() == {"key": "***", "name": "site", "kind": "browser"}
    for bad, why in (('[{"key": "k", "kind": "public"}]', "kind"), ('[{"key": "k", "types": ["web/fax"]}]', "web/fax"),
                     ("k1,k1", "given twice"), ('[{"key": "k", "colour": "red"}]', "colour"), ("[oops", "JSON")):
        with pytest.raises(ConfigError, match=why):
            load_collector_settings(write_keys=bad)


def test_the_token_bucket_counts_events_admits_a_big_batch_into_debt_and_says_when() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=10, burst=100, clock=lambda: now[0])
    assert bucket.take(60) == 0 and bucket.take(40) == 0  # the burst
    assert bucket.take(1) == pytest.approx(0.1)  # one event's worth of refill
    now[0] = 10.0  # full again
    assert bucket.take(250) == 0  # larger than the burst: admitted when full, into debt
    assert bucket.take(1) == pytest.approx(15.1)  # the debt (150) and one event: 15.1 s
    now[0] = 25.1
    assert bucket.take(1) == 0


# --- through the collector ----------------------------------------------------------------------


def keys(**browser: Any) -> list[dict[str, Any]]:
    return [{"key": BROWSER, "name": "site", "kind": "browser", **browser}, {"key": SERVER, "name": "backend"}]


def forged_batch(user: str) -> list[dict[str, Any]]:
    return [
        {"type": "page", "userId": user, "messageId": f"{user}-p", "properties": {"url": "https://acme.io/pricing"}},
        {"type": "track", "event": "Demo Requested", "userId": user, "messageId": f"{user}-d"},
        {"type": "track", "event": "Email Marked as Spam", "userId": user, "messageId": f"{user}-s"},
        {"type": "identify", "userId": user, "messageId": f"{user}-i", "traits": {"seniority": "vp"}},
        {"type": "track", "event": "Deal Lost", "userId": user, "messageId": f"{user}-l"},
    ]


@pytest.mark.integration
async def test_a_browser_key_sends_web_events_only_unless_granted_more(start_collector: Start) -> None:
    c = await ready(await start_collector(write_keys=keys()))
    status, answer, _ = await post(c, "/v1/batch", {"batch": forged_batch("fb-1"), "writeKey": BROWSER})
    assert (status, answer["accepted"], answer["skipped"]["reasons"]) == (200, 2, {"not_allowed": 3})
    assert {e["messageId"] for e in answer["skipped"]["examples"]} == {"fb-1-s", "fb-1-i", "fb-1-l"}
    assert "site (browser) may not send email/spam_report" in answer["skipped"]["examples"][0]["message"]
    status, answer, _ = await post(c, "/v1/t", {"event": "Unsubscribed", "userId": "fb-1", "writeKey": BROWSER})
    assert (status, answer["code"]) == (403, "not_allowed")
    status, answer, _ = await post(c, "/v1/batch", {"batch": forged_batch("fb-2")}, basic(SERVER))
    assert (status, answer["accepted"]) == (200, 5)  # the server key may send everything
    topics = await records_by_topic(c, 7)
    produced = {orjson.loads(r.value)["event_id"] for records in topics.values() for r in records}
    assert produced == {"fb-1-p", "fb-1-d", *(m["messageId"] for m in forged_batch("fb-2"))}

    granted = await ready(await start_collector(write_keys=keys(types=["profile/identify"])))
    status, answer, _ = await post(granted, "/v1/batch", {"batch": forged_batch("fb-3"), "writeKey": BROWSER})
    assert (answer["accepted"], answer["skipped"]["reasons"]) == (3, {"not_allowed": 2})


@pytest.mark.integration
@pytest.mark.slow
async def test_forged_traits_times_and_ids_meet_the_worker_and_the_collector(
        broker: TansuBroker, redis_server: RedisServer, tmp_path: Path, start_collector: Start) -> None:
    async with running(WorkerProcess(broker.bootstrap, redis_server.url, tmp_path)) as worker:
        c = await ready(await start_collector(prefix=worker.settings["topic_prefix"], write_keys=keys()))
        tag = uuid.uuid4().hex[:6]
        via_collector, via_topic, disguised = f"fa-{tag}", f"fb-{tag}", f"fc-{tag}\u202etxt.exe\u0085\u2028x"
        now = int(time.time() * 1000)
        iso_1970, iso_now = "1970-01-01T00:00:01Z", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

        # 1. email_domain beside a gmail address, by the collector and straight onto the topic
        identify = {"type": "identify", "userId": via_collector, "messageId": f"{tag}-i", "timestamp": iso_now,
                    "traits": {"email": "kim@gmail.com", "email_domain": "acme.io", "seniority": "vp"}}
        # 2. a demo request stamped in 1970 (sentAt now: no clock correction saves it)
        old_demo = {"type": "track", "event": "Demo Requested", "userId": via_collector, "messageId": f"{tag}-old",
                    "timestamp": iso_1970}
        status, answer, _ = await post(c, "/v1/batch", {"batch": [identify, old_demo], "sentAt": iso_now}, basic(SERVER))
        assert (status, answer["accepted"], answer["skipped"]["reasons"]) == (200, 1, {"too_old": 1})
        topics = await records_by_topic(c, 1)
        assert orjson.loads(topics["profile"][0].value)["traits"] == {"email": "kim@gmail.com", "seniority": "vp"}

        def event(lead: str, n: str, source: str, type_: str, at: int, **extra: Any) -> tuple[str, bytes, bytes]:
            body = {"event_id": f"{tag}-{n}", "lead_id": lead, "source": source, "type": type_, "occurred_at": at, **extra}
            return worker.topic(source), lead.encode(), orjson.dumps(body)

        await produce(broker.bootstrap, [
            event(via_topic, "t-i", "profile", "identify", now, traits={"email": "lee@gmail.com", "email_domain": "acme.io"}),
            event(via_topic, "t-old", "web", "demo_request", 1000),  # the worker's own check: DLQ too_old
            event(via_topic, "t-demo", "web", "demo_request", now),  # the award is still there to earn
            # 3. an id that would disguise a log line, crossing MQL (75 points) so the worker logs it
            event(disguised, "x-demo", "web", "demo_request", now),
            event(disguised, "x-price", "web", "page_view", now + 1, properties={"url": "https://acme.io/pricing"}),
        ])

        async def scored(lead: str, rule: str) -> dict[str, Any] | None:
            status, view = await worker.get(f"/leads/{lead}")
            rules = {r["rule_id"]: r["points"] for r in view.get("contributions", [])} if status == 200 else {}
            return rules if rule in rules else None

        await wait_for(lambda: scored(via_topic, "demo_request"), 60, "the fresh demo request")
        for lead in (via_collector, via_topic):
            await wait_for(lambda lead=lead: scored(lead, "personal_email"), 60, f"{lead}'s fit")  # type: ignore[misc]
            assert (await scored(lead, "personal_email"))["personal_email"] == -15  # type: ignore[index]
        assert (await scored(via_topic, "demo_request"))["demo_request"] == pytest.approx(50, abs=0.1)  # type: ignore[index]
        _, view = await worker.get(f"/leads/{via_collector}")
        assert "demo_request" not in {r["rule_id"] for r in view["contributions"]}  # the 1970 one was refused
        dlq = await consume_until(broker.bootstrap, worker.settings["dlq_topic"], lambda rs: len(rs) >= 1)
        assert [(dict(r.headers)["leadpulse.dlq.reason"], orjson.loads(r.value)["event_id"]) for r in dlq] == [
            (b"too_old", f"{tag}-t-old")]

        escaped = f"fc-{tag}\\u202etxt.exe\\x85\\u2028x"

        async def logged() -> bool:
            return f"handoff promoted {escaped} lead -> mql" in worker.log.read_text(encoding="utf-8", errors="replace")

        await wait_for(logged, 60, "the handoff's log line")
        text = worker.log.read_text(encoding="utf-8", errors="replace")
        assert not any(ch in text for ch in "\u202e\u0085\u2028")
