"""Sales alerts against real services: a Tansu broker and a real local HTTP receiver that fails,
rate-limits, slows down and recovers. The signature is checked with the snippet from the docs."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from leadpulse.alerts import command as alerts_command
from leadpulse.alerts.config import AlertSettings, load_alert_settings
from leadpulse.alerts.destinations import parse_retry_after, sign, slack_message, verify_signature
from leadpulse.alerts.service import AlertService
from leadpulse.dev.embedded import TansuBroker, free_port
from leadpulse.errors import ConfigError
from leadpulse.kafka import ensure_topics
from leadpulse.retry import backoff_delay
from leadpulse.settings import Settings

from tests.support.kafkatools import consume_until, produce

SECRET = "whsec-test-3f9c"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "integrations.md"


def handoff(lead: str = "lead-42", kind: str = "promoted", handoff_id: str | None = None,
            crossed_at: datetime | None = None) -> dict[str, Any]:
    at = (crossed_at or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    promoted = kind == "promoted"
    return {
        "handoff_id": handoff_id or f"h-{uuid.uuid4().hex[:12]}", "kind": kind, "lead_id": lead,
        "stage": "sql" if promoted else "mql", "previous_stage": "mql" if promoted else "sql",
        "score": 127.4 if promoted else 99.2, "threshold": 110 if promoted else 100, "fit_grade": "B",
        "fit_score": 35, "breakdown": {"behavioral": 92.4, "engagement": 35},
        "top_signals": [
            {"rule_id": "demo_request", "description": "", "category": "behavioral", "points": 50, "last_occurred_at": at},
            {"rule_id": "pricing_page", "description": "", "category": "behavioral", "points": 25, "last_occurred_at": at},
            {"rule_id": "careers_page", "description": "Read the careers page", "category": "behavioral",
             "points": 2, "last_occurred_at": at},
        ],
        "triggered_by_event_id": "ev-9", "model_version": "default-2026.11", "crossed_at": at,
    }


def docs_verifier() -> Callable[..., bool]:
    """The Python verification snippet of docs/integrations.md, executed as published."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.DOTALL)
    snippet = next(b for b in blocks if "def verify_leadpulse_signature" in b)
    namespace: dict[str, Any] = {}
    exec(compile(snippet, str(DOCS), "exec"), namespace)  # noqa: S102 - our own documentation
    return namespace["verify_leadpulse_signature"]  # type: ignore[no-any-return]


# --- pure parts ------------------------------------------------------------------------------------


def test_the_documented_snippet_verifies_signatures_and_refuses_replays_and_tampering() -> None:
    verify = docs_verifier()
    body = orjson.dumps(handoff())
    now = int(time.time())
    headers = {"X-LeadPulse-Timestamp": str(now), "X-LeadPulse-Signature": sign(SECRET.encode(), now, body)}
    assert verify(SECRET.encode(), body, headers)
    assert verify_signature(SECRET.encode(), body, headers["X-LeadPulse-Timestamp"], headers["X-LeadPulse-Signature"])
    assert not verify(SECRET.encode(), body + b" ", headers)
    assert not verify(b"other-secret", body, headers)
    old = now - 301
    stale = {"X-LeadPulse-Timestamp": str(old), "X-LeadPulse-Signature": sign(SECRET.encode(), old, body)}
    assert not verify(SECRET.encode(), body, stale)
    assert not verify_signature(SECRET.encode(), body, stale["X-LeadPulse-Timestamp"], stale["X-LeadPulse-Signature"])
    assert not verify(SECRET.encode(), body, {"X-LeadPulse-Timestamp": "soon", "X-LeadPulse-Signature": "v1=00"})
    assert not verify(SECRET.encode(), body, {})


def test_the_slack_message_names_the_lead_score_grade_stage_and_reasons_in_plain_words() -> None:
    h = handoff(lead="acme/kim lee")
    msg = slack_message(h, "https://crm.example.com/leads/{lead_id}?tab=activity")
    text = orjson.dumps(msg).decode()
    assert msg["text"].startswith("▲ acme/kim lee is now SQL: score 127 (≥110), fit grade B")
    for words in ("requested a demo", "looked at pricing", "Read the careers page", "+50", "*Fit grade*\\nB"):
        assert words in text
    assert "https://crm.example.com/leads/acme%2Fkim%20lee?tab=activity" in text
    assert msg["blocks"][-2]["elements"][0]["url"].endswith("acme%2Fkim%20lee?tab=activity")
    down = slack_message(handoff(kind="demoted"))
    assert down["text"].startswith("▼ lead-42 left SQL for MQL") and "actions" not in orjson.dumps(down).decode()
    assert "&lt;b&gt;" in orjson.dumps(slack_message(handoff(lead="<b>"))).decode()  # no mrkdwn injection


def test_the_slack_text_fallback_is_escaped_like_the_blocks() -> None:
    # Slack parses `text` as mrkdwn: `<!channel>` pings everyone, `<url|label>` hides a link.
    msg = slack_message(handoff(lead="<!channel> & <https://evil.example|Open in CRM>"))
    assert msg["text"].startswith("▲ &lt;!channel&gt; &amp; &lt;https://evil.example|Open in CRM&gt; is now SQL")
    assert "<" not in msg["text"] and ">" not in msg["text"]
    assert "&lt;!channel&gt; &amp; &lt;https://evil.example|Open in CRM&gt;" in msg["blocks"][0]["text"]["text"]


def test_backoff_grows_is_capped_and_jittered_and_retry_after_is_read_both_ways() -> None:
    rng = random.Random(7)
    for retry in range(1, 12):
        ceiling = min(30.0, 0.5 * 2 ** (retry - 1))
        delays = {backoff_delay(retry, 0.5, 30.0, rng) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays) and len(delays) > 1
    assert parse_retry_after("7") == 7
    when = datetime.now(UTC) + timedelta(seconds=90)
    assert 85 <= (parse_retry_after(format_datetime(when, usegmt=True)) or 0) <= 91
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_alert_settings_need_a_destination_and_a_secret_for_the_webhook(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SLACK_WEBHOOK_URL", "WEBHOOK_URL", "WEBHOOK_SECRET", "CONFIG"):
        monkeypatch.delenv(f"LEADPULSE_{name}", raising=False)
    with pytest.raises(ConfigError, match="no alert destination"):
        load_alert_settings()
    with pytest.raises(ConfigError, match="LEADPULSE_WEBHOOK_SECRET"):
        load_alert_settings(webhook_url="https://hooks.example.com/x")
    with pytest.raises(ConfigError, match="LEADPULSE_WEBHOOK_URL"):
        load_alert_settings(webhook_url="ftp://hooks.example.com/x", webhook_secret="s")
    monkeypatch.setenv("LEADPULSE_SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T/B/SECRETPART")
    monkeypatch.setenv("LEADPULSE_WEBHOOK_SECRET", "topsecret")
    result = CliRunner().invoke(alerts_command.alerts, ["--print-config", "--webhook-url", "https://h.example.com/x?token=abc",
                                                      "--alerts-demotions"])
    assert result.exit_code == 0, result.output
    shown = orjson.loads(result.output)
    assert "SECRETPART" not in result.output and "topsecret" not in result.output and "abc" not in result.output
    assert shown["alerts_demotions"] is True and shown["alerts_dlq_topic"] == "leads.handoff.dlq"
    result = CliRunner().invoke(alerts_command.alerts, ["--alerts-max-attempts", "0"])
    assert result.exit_code == 2 and "LEADPULSE_ALERTS_MAX_ATTEMPTS" in result.output


# --- a real receiver ----------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: Any
    body: bytes
    at: float
    status: int = 0
    slow: bool = False  # answered after the sender's timeout


@dataclass
class Receiver:
    """Answers each path from a script (status, headers, or a delay), then `default`."""

    url: str = ""
    scripts: dict[str, list[tuple[int, dict[str, str], float]]] = field(default_factory=dict)
    default: dict[str, int] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)
    #: what a receiver that dedupes on Idempotency-Key would act on
    announced: dict[str, list[str]] = field(default_factory=dict)

    def script(self, path: str, *steps: tuple[int, dict[str, str]] | float) -> None:
        self.scripts[path] = [(s, {}, 0.0) if isinstance(s, int) else (200, {}, s) if isinstance(s, float)
                              else (s[0], s[1], 0.0) for s in steps]

    async def handle(self, request: web.Request) -> web.Response:
        got = Received(request.path, request.headers.copy(), await request.read(), time.monotonic())
        self.requests.append(got)
        steps = self.scripts.get(request.path)
        status, headers, delay = steps.pop(0) if steps else (self.default.get(request.path, 200), {}, 0.0)
        got.status, got.slow = status, delay > 0
        if delay:
            await asyncio.sleep(delay)  # slower than the sender's timeout: it gives up first
        if 200 <= status < 300:
            key = request.headers.get("Idempotency-Key", "")
            keys = self.announced.setdefault(request.path, [])
            if key not in keys:
                keys.append(key)
        return web.Response(status=status, headers=headers, text="ok" if status < 300 else "nope")

    def on(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/{path:.*}", rec.handle)
    runner = web.AppRunner(app, shutdown_timeout=1, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield rec
    await runner.cleanup()


@pytest.fixture
async def start_alerts(broker: TansuBroker, receiver: Receiver) -> AsyncIterator[Callable[..., Awaitable[AlertService]]]:
    services: list[AlertService] = []

    async def start(settings: Settings | None = None, **config: Any) -> AlertService:
        tag = uuid.uuid4().hex[:8]
        settings = settings or Settings(kafka_bootstrap=broker.bootstrap, group_id=f"g{tag}", partitions=2,
                                        handoff_topic=f"h{tag}.handoff")
        cfg = AlertSettings(**{
            "slack_webhook_url": receiver.url + "/slack", "webhook_url": receiver.url + "/hook",
            "webhook_secret": SECRET, "crm_url_template": "https://crm.example.com/leads/{lead_id}",
            "alerts_port": 0, "alerts_start_from": "earliest", "alerts_backoff": 0.2, "alerts_backoff_max": 1.0,
            "alerts_timeout": 10.0, "alerts_dlq_topic": f"{settings.handoff_topic}.dlq", **config})
        service = AlertService(settings, cfg)
        await service.start()
        services.append(service)
        return service

    yield start
    for service in services:
        await service.stop()


async def publish(service: AlertService, *handoffs: dict[str, Any]) -> list[bytes]:
    values = [orjson.dumps(h) for h in handoffs]
    await produce(service.settings.kafka_bootstrap,
                  [(service.settings.handoff_topic, h["lead_id"].encode(), v) for h, v in zip(handoffs, values)])
    return values


async def eventually(check: Callable[[], Any], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.1)


async def metric(service: AlertService, name: str, **labels: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{service.port}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


async def committed(service: AlertService) -> int:
    """Sum of the alerts group's committed offsets on the handoff topic."""
    s = service.settings
    consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, group_id=service.group_id, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        parts = consumer.partitions_for_topic(s.handoff_topic) or set()
        return sum([(await consumer.committed(TopicPartition(s.handoff_topic, p))) or 0 for p in parts])
    finally:
        await consumer.stop()


# --- the service against the broker and the receiver --------------------------------------------


@pytest.mark.integration
@pytest.mark.slow  # ≥ 5 s (README, Tests)
async def test_a_promotion_reaches_slack_and_the_signed_webhook_then_is_committed(
        start_alerts: Callable[..., Awaitable[AlertService]], receiver: Receiver) -> None:
    service = await start_alerts()
    h = handoff(lead="kim@acme")
    [value] = await publish(service, h)
    await eventually(lambda: receiver.on("/slack") and receiver.on("/hook"), what="both deliveries")
    [hook] = receiver.on("/hook")
    assert hook.body == value  # the handoff record exactly as published
    assert hook.headers["Idempotency-Key"] == h["handoff_id"]
    assert hook.headers["Content-Type"] == "application/json"
    assert hook.headers["X-LeadPulse-Event"] == "handoff.promoted" and hook.headers["X-LeadPulse-Attempt"] == "1"
    assert docs_verifier()(SECRET.encode(), hook.body, hook.headers)
    [slack] = receiver.on("/slack")
    text = orjson.loads(slack.body)["text"]
    assert "kim@acme is now SQL" in text and "requested a demo" in text and "fit grade B" in text
    assert "https://crm.example.com/leads/kim%40acme" in slack.body.decode()
    await eventually(lambda: committed(service), what="the offset committed after delivery")
    assert await committed(service) == 1
    assert await metric(service, "leadpulse_alert_deliveries_total", destination="slack", outcome="ok") == 1
    assert await metric(service, "leadpulse_alert_deliveries_total", destination="webhook", outcome="ok") == 1
    assert await metric(service, "leadpulse_alerts_ready") == 1


@pytest.mark.integration
@pytest.mark.slow
async def test_failures_rate_limits_and_slowness_are_retried_until_the_receiver_recovers(
        start_alerts: Callable[..., Awaitable[AlertService]], receiver: Receiver) -> None:
    receiver.script("/hook", 500, (429, {"Retry-After": "1"}), 6.0, 503, 200)  # 6.0: answers after 6 s
    receiver.script("/slack", (503, {}), 200)
    # The only test that wants a delivery to time out: 2 s, well under the slow answer. Elsewhere
    # the product's 10 s, so that a stalled test process does not turn into a retry.
    service = await start_alerts(alerts_timeout=2.0)
    h = handoff()
    await publish(service, h)
    await eventually(lambda: [r for r in receiver.on("/hook") if r.status == 200 and not r.slow],
                     what="webhook recovery")
    # The offset is committed once both destinations are done: after that nothing is in flight,
    # whichever of the two finished first.
    await eventually(lambda: committed(service), what="commit after the retries")
    tries = receiver.on("/hook")
    assert [(r.status, r.slow) for r in tries] == [(500, False), (429, False), (200, True), (503, False),
                                                   (200, False)]
    assert {r.headers["Idempotency-Key"] for r in tries} == {h["handoff_id"]}
    assert [r.headers["X-LeadPulse-Attempt"] for r in tries] == ["1", "2", "3", "4", "5"]
    verify = docs_verifier()
    assert all(verify(SECRET.encode(), r.body, r.headers) for r in tries)  # each try signed afresh
    # Lower bounds the sender's own waits guarantee at any machine speed: each try is stamped as
    # it arrives, and the sender starts waiting only after the answer to the one before. (The
    # timed-out try is shown by the sequence above: its late 200 was not taken, tries 4 and 5
    # followed; a gap after it would also hold the time its request took to arrive.)
    gaps = [b.at - a.at for a, b in itertools.pairwise(tries)]
    assert gaps[0] >= 0.1  # backoff: at least half of the first step (0.2 s)
    assert gaps[1] >= 1.0  # Retry-After: 1 honoured
    assert [r.status for r in receiver.on("/slack")] == [503, 200]
    assert receiver.announced["/hook"] == [h["handoff_id"]]
    assert await metric(service, "leadpulse_alert_deliveries_total", destination="webhook", outcome="retry") == 4
    assert await metric(service, "leadpulse_alert_deliveries_total", destination="webhook", outcome="ok") == 1
    assert await metric(service, "leadpulse_alert_deliveries_total", destination="slack", outcome="retry") == 1
    assert await metric(service, "leadpulse_alert_deliveries_total", outcome="dead_letter") == 0


@pytest.mark.integration
@pytest.mark.slow
async def test_after_n_tries_the_alert_is_dead_lettered_and_other_4xx_are_not_retried(
        start_alerts: Callable[..., Awaitable[AlertService]], receiver: Receiver) -> None:
    receiver.default.update({"/hook": 500, "/gone": 404})
    service = await start_alerts(slack_webhook_url=receiver.url + "/gone", alerts_max_attempts=3)
    h = handoff()
    [value] = await publish(service, h)
    dlq = service.config.alerts_dlq_topic
    records = await consume_until(service.settings.kafka_bootstrap, dlq, lambda rs: len(rs) >= 2)
    by_destination = {dict(r.headers)["leadpulse.alert.destination"].decode(): r for r in records}
    assert set(by_destination) == {"webhook", "slack"}
    for destination, reason, attempts in (("webhook", "http_500", "3"), ("slack", "http_404", "1")):
        record = by_destination[destination]
        headers = {k: v.decode() for k, v in record.headers}
        assert record.value == value and record.key == h["lead_id"].encode()  # unchanged: replayable
        assert (headers["leadpulse.alert.reason"], headers["leadpulse.alert.attempts"]) == (reason, attempts)
        assert headers["leadpulse.alert.topic"] == service.settings.handoff_topic
        assert int(headers["leadpulse.alert.offset"]) == 0 and headers["leadpulse.alert.message"] == "nope"
    assert len(receiver.on("/hook")) == 3 and len(receiver.on("/gone")) == 1
    await eventually(lambda: committed(service), what="commit after dead-lettering")
    assert await committed(service) == 1
    m = {(d, o): await metric(service, "leadpulse_alert_deliveries_total", destination=d, outcome=o)
         for d in ("webhook", "slack") for o in ("ok", "retry", "failed", "dead_letter")}
    assert m == {("webhook", "ok"): 0, ("webhook", "retry"): 2, ("webhook", "failed"): 1, ("webhook", "dead_letter"): 1,
                 ("slack", "ok"): 0, ("slack", "retry"): 0, ("slack", "failed"): 1, ("slack", "dead_letter"): 1}


@pytest.mark.integration
@pytest.mark.slow
async def test_demotions_are_off_by_default_and_a_redelivered_handoff_is_announced_once(
        start_alerts: Callable[..., Awaitable[AlertService]], receiver: Receiver) -> None:
    first = await start_alerts()
    promoted, demoted = handoff(lead="lead-7"), handoff(lead="lead-7", kind="demoted")
    stale = handoff(lead="lead-8", crossed_at=datetime.now(UTC) - timedelta(days=3))
    invalid = {"handoff_id": "x"}
    await publish(first, promoted, promoted, demoted, stale)  # the worker may publish a handoff twice
    await produce(first.settings.kafka_bootstrap, [(first.settings.handoff_topic, b"lead-9", orjson.dumps(invalid))])
    await eventually(lambda: _equals(committed(first), 5), what="all five committed")
    assert [orjson.loads(r.body)["handoff_id"] for r in receiver.on("/hook")] == [promoted["handoff_id"]]
    assert len(receiver.on("/slack")) == 1
    assert await metric(first, "leadpulse_alert_handoffs_total", kind="promoted", outcome="duplicate") == 1
    assert await metric(first, "leadpulse_alert_handoffs_total", kind="demoted", outcome="skipped") == 1
    assert await metric(first, "leadpulse_alert_handoffs_total", kind="promoted", outcome="stale") == 1
    assert await metric(first, "leadpulse_alert_handoffs_total", outcome="invalid") == 1
    dead = await consume_until(first.settings.kafka_bootstrap, first.config.alerts_dlq_topic, lambda rs: len(rs) >= 1)
    assert [dict(r.headers)["leadpulse.alert.reason"] for r in dead] == [b"invalid_handoff"]

    # Another process reads the same handoffs again (a new group: as after a crash before the
    # commit), with demotions on. The webhook sees the promotion a second time under the same
    # Idempotency-Key, so a receiver that dedupes acts on it once.
    tag = uuid.uuid4().hex[:8]
    again = await start_alerts(first.settings.model_copy(update={"group_id": f"g{tag}"}), alerts_demotions=True,
                               alerts_dlq_topic=first.config.alerts_dlq_topic)
    # Committed after every delivery of the five: the demotion's Slack message, sent beside its
    # webhook, is in too (waiting for the third webhook alone raced it).
    await eventually(lambda: _equals(committed(again), 5), what="second group committed")
    keys = [r.headers["Idempotency-Key"] for r in receiver.on("/hook")]
    assert keys == [promoted["handoff_id"], promoted["handoff_id"], demoted["handoff_id"]]
    assert receiver.announced["/hook"] == [promoted["handoff_id"], demoted["handoff_id"]]
    assert receiver.on("/hook")[-1].headers["X-LeadPulse-Event"] == "handoff.demoted"
    assert "left SQL" in orjson.loads(receiver.on("/slack")[-1].body)["text"]


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


@pytest.mark.integration
@pytest.mark.slow
async def test_the_alerts_command_delivers_and_stops_cleanly_on_sigterm(broker: TansuBroker, receiver: Receiver,
                                                                        tmp_path: Path) -> None:
    port, tag = free_port(), uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADPULSE_")}
    env.update(LEADPULSE_KAFKA_BOOTSTRAP=broker.bootstrap, LEADPULSE_GROUP_ID=f"g{tag}", LEADPULSE_PARTITIONS="2",
               LEADPULSE_HANDOFF_TOPIC=f"h{tag}.handoff", LEADPULSE_WEBHOOK_URL=receiver.url + "/hook",
               LEADPULSE_WEBHOOK_SECRET=SECRET, LEADPULSE_ALERTS_PORT=str(port), LEADPULSE_ALERTS_START_FROM="earliest")
    log_path = tmp_path / "alerts.log"
    with log_path.open("wb") as log:
        # The command object as cli.py registers it (`leadpulse alerts`).
        proc = subprocess.Popen([sys.executable, "-c", "from leadpulse.alerts.command import alerts; alerts()"],  # noqa: ASYNC220
                                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        h = handoff(lead="cmd-lead")
        await produce(broker.bootstrap, [(f"h{tag}.handoff", b"cmd-lead", orjson.dumps(h))])
        await eventually(lambda: proc.poll() is None and receiver.on("/hook"), what=log_path.read_text()[-2000:])
        assert docs_verifier()(SECRET.encode(), receiver.on("/hook")[0].body, receiver.on("/hook")[0].headers)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_path.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def scrape(port: int, name: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


async def status(port: int, path: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}") as resp:
        return resp.status


@pytest.mark.integration
@pytest.mark.slow
async def test_alerts_started_while_the_broker_is_down_waits_for_it_then_delivers(receiver: Receiver,
                                                                                     tmp_path: Path) -> None:
    """`leadpulse alerts` starts with no broker: it keeps retrying (a fresh client per try, since an
    aiokafka client whose start failed cannot start again), answers /healthz, says not ready, and
    once the broker is up consumes and delivers without a restart."""
    broker = TansuBroker(tmp_path, port=free_port())  # its port is known; it is not running yet
    port, tag = free_port(), uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADPULSE_")}
    env.update(LEADPULSE_KAFKA_BOOTSTRAP=broker.bootstrap, LEADPULSE_GROUP_ID=f"g{tag}", LEADPULSE_PARTITIONS="2",
               LEADPULSE_HANDOFF_TOPIC=f"h{tag}.handoff", LEADPULSE_WEBHOOK_URL=receiver.url + "/hook",
               LEADPULSE_WEBHOOK_SECRET=SECRET, LEADPULSE_ALERTS_PORT=str(port), LEADPULSE_ALERTS_START_FROM="earliest")
    log_path = tmp_path / "alerts.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "leadpulse", "alerts"],  # noqa: ASYNC220
                                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        async def kept_retrying() -> bool:
            # Its own count of failed attempts, not a sleep: three failures, one process.
            try:
                return await scrape(port, "leadpulse_alert_kafka_errors_total") >= 3
            except aiohttp.ClientError:
                return False  # its metrics server is not up yet

        await eventually(kept_retrying, what=log_path.read_text()[-2000:])
        assert proc.poll() is None, "no crash while the broker is down"
        assert await status(port, "/healthz") == 200
        assert await status(port, "/readyz") == 503
        assert await scrape(port, "leadpulse_alerts_ready") == 0

        broker.start()
        try:
            h = handoff(lead="late-lead")
            await produce(broker.bootstrap, [(f"h{tag}.handoff", b"late-lead", orjson.dumps(h))])
            await eventually(lambda: receiver.on("/hook"), what=log_path.read_text()[-2000:])
            [hook] = receiver.on("/hook")
            assert orjson.loads(hook.body)["handoff_id"] == h["handoff_id"]
            assert docs_verifier()(SECRET.encode(), hook.body, hook.headers)

            async def ready() -> bool:
                return await status(port, "/readyz") == 200

            await eventually(ready, what="/readyz 200 once consuming")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, log_path.read_text()[-2000:]
        finally:
            broker.stop()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.integration
@pytest.mark.slow
async def test_a_handoff_that_cannot_be_read_is_dead_lettered_and_the_consumer_goes_on(
        start_alerts: Callable[..., Awaitable[AlertService]], receiver: Receiver) -> None:
    """Valid by the schema (its date-time format takes year 0), yet unreadable: fromisoformat
    fails on it. It used to stop the consumer, and again after every restart."""
    service = await start_alerts()
    year_zero, good = handoff(lead="odd-1"), handoff(lead="fine-1")
    year_zero["crossed_at"] = "0000-01-01T00:00:00Z"
    topic = service.settings.handoff_topic
    await produce(service.settings.kafka_bootstrap, [
        (topic, b"same-key", orjson.dumps(year_zero)), (topic, b"same-key", None), (topic, b"same-key", orjson.dumps(good))])
    await eventually(lambda: receiver.on("/hook"), what="the handoff behind the odd ones delivered")
    assert [orjson.loads(r.body)["handoff_id"] for r in receiver.on("/hook")] == [good["handoff_id"]]
    dead = await consume_until(service.settings.kafka_bootstrap, service.config.alerts_dlq_topic, lambda rs: len(rs) >= 2)
    reasons = {int(dict(r.headers)["leadpulse.alert.offset"]):
               (dict(r.headers)["leadpulse.alert.reason"], dict(r.headers)["leadpulse.alert.message"]) for r in dead}
    assert reasons[0] == (b"internal", b"ValueError: year 0 is out of range")
    assert reasons[1][0] == b"invalid_handoff"  # a tombstone
    await eventually(lambda: _equals(committed(service), 3), what="committed past every record")
    assert not service.crashed.is_set()
    assert await metric(service, "leadpulse_alert_handoffs_total", outcome="internal") == 1


@pytest.mark.integration
@pytest.mark.slow
async def test_handoffs_held_up_by_failing_destinations_show_as_lag_and_latency_counts_from_crossed_at(
        broker: TansuBroker, start_alerts: Callable[..., Awaitable[AlertService]], receiver: Receiver) -> None:
    """While the destinations fail, the batch waits in retries and its handoffs are the alerts
    consumer's lag until they are delivered; each delivery's latency runs from crossed_at."""
    receiver.default.update({"/hook": 503, "/slack": 503})
    tag = uuid.uuid4().hex[:8]
    settings = Settings(kafka_bootstrap=broker.bootstrap, group_id=f"g{tag}", partitions=1,
                        handoff_topic=f"h{tag}.handoff")
    await ensure_topics(settings, [settings.handoff_topic])
    crossed = datetime.now(UTC) - timedelta(seconds=30)
    held = [handoff(lead=f"held-{i}", crossed_at=crossed) for i in range(3)]
    # Published before the service starts, so that its first batch holds all three.
    await produce(broker.bootstrap, [(settings.handoff_topic, h["lead_id"].encode(), orjson.dumps(h)) for h in held])
    service = await start_alerts(settings, alerts_max_attempts=50, alerts_backoff_max=0.5)
    lag = "leadpulse_alert_consumer_lag_messages"

    async def lag_is(n: int) -> bool:
        return await metric(service, lag) == n

    await eventually(lambda: lag_is(3), what="three handoffs held up in retries")
    assert await metric(service, lag, topic=settings.handoff_topic, partition="0") == 3
    assert await committed(service) == 0
    receiver.default.update({"/hook": 200, "/slack": 200})
    await eventually(lambda: _equals(committed(service), 3), what="all three delivered and committed")
    await eventually(lambda: lag_is(0), what="no lag once committed")
    for destination in ("slack", "webhook"):
        latency = "leadpulse_alert_latency_seconds"
        assert await metric(service, f"{latency}_count", destination=destination) == 3
        assert await metric(service, f"{latency}_sum", destination=destination) >= 3 * 30
        assert await metric(service, f"{latency}_bucket", destination=destination, le="10.0") == 0


@pytest.mark.integration
@pytest.mark.slow  # ≥ 5 s (README, Tests)
async def test_crm_moves_are_not_announced_unless_asked(
        start_alerts: Callable[..., Awaitable[AlertService]], receiver: Receiver) -> None:
    """advanced/closed/recycled are sales' own doing in the CRM: not news to sales by default
    (alerts_lifecycle turns them on). sla_overdue is a reminder and is delivered."""
    first = await start_alerts()
    moves = [{**handoff(lead="lead-c", kind=kind), "stage": stage, "outcome": outcome, "reason": None, "cooldown_until": None}
             for kind, stage, outcome in (("advanced", "sal", "sql_accepted"), ("closed", "customer", "won"),
                                          ("recycled", "lead", "sql_rejected"))]
    overdue = {**handoff(lead="lead-s", kind="sla_overdue"), "stage": "sql", "previous_stage": "sql"}
    await publish(first, *moves, overdue)
    await eventually(lambda: _equals(committed(first), 4), what="all four committed")
    assert [orjson.loads(r.body)["handoff_id"] for r in receiver.on("/hook")] == [overdue["handoff_id"]]
    for kind in ("advanced", "closed", "recycled"):
        assert await metric(first, "leadpulse_alert_handoffs_total", kind=kind, outcome="skipped") == 1
    tag = uuid.uuid4().hex[:8]
    again = await start_alerts(first.settings.model_copy(update={"group_id": f"g{tag}"}), alerts_lifecycle=True,
                               alerts_dlq_topic=first.config.alerts_dlq_topic)
    await eventually(lambda: _equals(committed(again), 4), what="second group committed")
    assert {m["handoff_id"] for m in moves} <= {orjson.loads(r.body)["handoff_id"] for r in receiver.on("/hook")}
