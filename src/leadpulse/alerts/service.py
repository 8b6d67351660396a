"""`leadpulse alerts`: tell sales, in Slack and over a signed webhook, when a lead is promoted.

Consumes `leads.handoff` in its own group (`<group>-alerts`) and delivers each handoff to every
configured destination. A delivery that fails with 5xx, 429, 408 or a timeout is retried with
exponential backoff and jitter (Retry-After is honoured); after `alerts_max_attempts` tries, or at
once on another 4xx, the handoff goes to the alert dead-letter topic with the reason in headers.
Offsets are committed only once every handoff of the batch is delivered or dead-lettered, so a
crash re-announces rather than loses; receivers dedupe on `Idempotency-Key` = handoff_id, the
same id a redelivered handoff carries. No record stops the consumer: one it cannot read or render
(schema-valid but odd, such as a `crossed_at` in year 0) is dead-lettered with reason
`invalid_handoff` or `internal`, and the rest go on. docs/integrations.md documents the payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import quote, urlsplit

import aiohttp
import click
import fastjsonschema
import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import Field, SecretStr, field_validator

from .. import __version__, kafka
from ..collector.app import (
    CONFIG_ENV,
    FileSettings,
    configure_logging,
    load_file_settings,
    run_command,
    serve_until_signalled,
    settings_flags,
    split_options,
)
from ..errors import ConfigError
from ..events import load_schema
from ..settings import Settings, load_settings

log = logging.getLogger("leadpulse.alerts")

#: as for the worker: Tansu holds a joining member for session_timeout/2 (docs/architecture.md)
SESSION_TIMEOUT_MS = 10_000
SIGNATURE_HEADER = "X-LeadPulse-Signature"
TIMESTAMP_HEADER = "X-LeadPulse-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: receivers reject signatures older than this (docs/integrations.md)
REPLAY_WINDOW_S = 300
TOP_REASONS = 5

_validate_handoff = fastjsonschema.compile(load_schema("handoff.schema.json"))

#: the default model's rules in the words a salesperson uses; a rule's own `description` wins
PLAIN_WORDS = {
    "demo_request": "requested a demo",
    "pricing_page": "looked at pricing",
    "competitor_comparison": "compared us with a competitor",
    "case_study": "read customer stories",
    "page_view": "browsed the website",
    "form_submit": "filled in a form",
    "content_download": "downloaded content",
    "email_open": "opened our emails",
    "email_click": "clicked links in our emails",
    "email_reply": "replied to an email",
    "webinar_registered": "registered for a webinar",
    "webinar_attended": "attended a webinar",
    "webinar_attended_briefly": "dropped into a webinar",
    "webinar_question": "asked a question in a webinar",
}


# --- settings --------------------------------------------------------------------------------


def _http_url(value: str | None, name: str) -> str | None:
    if value is None or value == "":
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name} must be an http:// or https:// URL")
    return value


class AlertSettings(FileSettings):
    config_section: ClassVar[str] = "alerts"

    slack_webhook_url: SecretStr | None = Field(None, description="Slack incoming-webhook URL (a secret)")
    webhook_url: str | None = Field(None, description="generic JSON webhook URL, signed with HMAC-SHA256")
    webhook_secret: SecretStr | None = Field(None, description="HMAC-SHA256 key for the webhook signature")
    crm_url_template: str | None = Field(
        None, description="link to a lead in the CRM; {lead_id} is replaced (URL-encoded)"
    )
    alerts_host: str = Field("127.0.0.1", description="address of the alerts metrics server")
    alerts_port: int = Field(6068, ge=0, le=65535, description="alerts metrics port (0: any free port)")
    alerts_demotions: bool = Field(False, description="also announce demotions (a lead leaving a stage)")
    alerts_dlq_topic: str = Field("leads.handoff.dlq", description="where undeliverable alerts go")
    alerts_max_attempts: int = Field(6, ge=1, le=50, description="tries per destination before dead-lettering")
    alerts_backoff: float = Field(1.0, gt=0, description="seconds before the first retry; doubles each time")
    alerts_backoff_max: float = Field(60.0, gt=0, description="longest wait between tries")
    alerts_retry_after_max: float = Field(300.0, ge=0, description="longest Retry-After honoured (seconds)")
    alerts_timeout: float = Field(10.0, gt=0, description="seconds before a delivery attempt times out")
    alerts_start_from: Literal["latest", "earliest"] = Field(
        "latest", description="where a new alerts group starts reading leads.handoff"
    )
    alerts_max_age: float = Field(
        86_400.0, ge=0, description="skip handoffs that crossed longer ago than this, in seconds (0: never)"
    )

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        return _http_url(value, "webhook_url")

    @field_validator("slack_webhook_url")
    @classmethod
    def _slack(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and _http_url(value.get_secret_value(), "slack_webhook_url") is None:
            return None
        return value

    def masked(self) -> dict[str, Any]:
        out = super().masked()
        if self.webhook_url and urlsplit(self.webhook_url).query:  # tokens often ride in the query
            out["webhook_url"] = self.webhook_url.split("?", 1)[0] + "?***"
        return out


def load_alert_settings(config: Path | None = None, **overrides: Any) -> AlertSettings:
    settings = load_file_settings(AlertSettings, config, **overrides)
    if settings.slack_webhook_url is None and settings.webhook_url is None:
        raise ConfigError("no alert destination: set LEADPULSE_SLACK_WEBHOOK_URL and/or LEADPULSE_WEBHOOK_URL")
    if settings.webhook_url and settings.webhook_secret is None:
        raise ConfigError("LEADPULSE_WEBHOOK_URL needs LEADPULSE_WEBHOOK_SECRET: webhook calls are always signed")
    return settings


# --- what is sent ------------------------------------------------------------------------------


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header value: v1=hex(HMAC-SHA256(secret, "<timestamp>." + body))."""
    return "v1=" + hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, timestamp: str | None, signature: str | None,
                     tolerance: int = REPLAY_WINDOW_S, now: float | None = None) -> bool:
    """What a receiver does (docs/integrations.md has the same code): a fresh timestamp and a
    matching signature, compared in constant time."""
    if not timestamp or not signature or not timestamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature.strip())


def crm_link(template: str | None, lead_id: str) -> str | None:
    # replace(), not format(): a template may hold other braces, and lead ids are not trusted
    return template.replace("{lead_id}", quote(lead_id, safe="")) if template else None


def reason_text(signal: dict[str, Any]) -> str:
    rule = str(signal.get("rule_id", ""))
    return str(signal.get("description") or PLAIN_WORDS.get(rule) or rule.replace("_", " "))


def _mrkdwn(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(handoff: dict[str, Any], crm_template: str | None = None) -> dict[str, Any]:
    """A Slack incoming-webhook payload: a plain `text` fallback and Block Kit blocks."""
    lead = str(handoff["lead_id"])
    link = crm_link(crm_template, lead)
    who = f"<{link}|{_mrkdwn(lead)}>" if link else f"*{_mrkdwn(lead)}*"
    stage, previous = str(handoff["stage"]).upper(), str(handoff["previous_stage"]).upper()
    score, grade = float(handoff["score"]), handoff["fit_grade"]
    threshold = float(handoff["threshold"])
    if handoff["kind"] == "promoted":
        headline = f":arrow_up: {who} is now *{_mrkdwn(stage)}* (was {_mrkdwn(previous)})"
        text = f"▲ {lead} is now {stage}: score {score:.0f} (≥{threshold:g}), fit grade {grade}"
    else:
        headline = f":arrow_down: {who} left *{_mrkdwn(previous)}* for {_mrkdwn(stage)}"
        text = f"▼ {lead} left {previous} for {stage}: score {score:.0f} (<{threshold:g}), fit grade {grade}"
    reasons = [f"• {_mrkdwn(reason_text(s))} ({float(s['points']):+.0f})"
               for s in handoff.get("top_signals", [])[:TOP_REASONS]]
    if reasons:
        text += " because " + ", ".join(reason_text(s) for s in handoff["top_signals"][:TOP_REASONS])
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": headline}},
        {"type": "section", "fields": [
            {"type": "mrkdwn", "text": f"*Score*\n{score:.0f} (threshold {threshold:g})"},
            {"type": "mrkdwn", "text": f"*Fit grade*\n{_mrkdwn(str(grade))}"},
            {"type": "mrkdwn", "text": f"*Stage*\n{_mrkdwn(stage)}"},
        ]},
    ]
    if reasons:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "*Why*\n" + "\n".join(reasons)}})
    if link:
        blocks.append({"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "Open in CRM"}, "url": link},
        ]})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _mrkdwn(
        f"crossed at {handoff['crossed_at']} · model {handoff['model_version']} · id {handoff['handoff_id']}")}]})
    # Slack reads `text` as mrkdwn too: a raw `<!channel>` or `<https://evil|Open>` in a lead id
    # would ping the channel or hide a link, so it is escaped like the blocks.
    return {"text": _mrkdwn(text), "blocks": blocks}


# --- delivery ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attempt:
    ok: bool
    retriable: bool = False
    reason: str = "ok"
    detail: str = ""
    retry_after: float | None = None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After in seconds: delta-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(retry: int, initial: float, maximum: float, rng: random.Random | None = None) -> float:
    """The wait before retry number `retry` (1, 2, …): exponential, capped, with "equal jitter"
    (half fixed, half random), so retries spread out yet never come sooner than half the step."""
    ceiling = min(maximum, initial * 2.0 ** (retry - 1))
    jitter: float = (rng or random).uniform(0, ceiling / 2)
    return ceiling / 2 + jitter


class Destination:
    name: ClassVar[str]

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout

    def request(self, handoff: dict[str, Any], raw: bytes, attempt: int) -> tuple[bytes, dict[str, str]]:
        raise NotImplementedError

    async def send(self, http: aiohttp.ClientSession, handoff: dict[str, Any], raw: bytes, attempt: int) -> Attempt:
        try:
            body, headers = self.request(handoff, raw, attempt)
        except Exception as exc:  # noqa: BLE001 - a handoff this destination cannot render: no retry helps
            return Attempt(False, False, "internal", f"{type(exc).__name__}: {exc}")
        headers = {"Content-Type": "application/json", "User-Agent": f"leadpulse/{__version__}",
                   IDEMPOTENCY_HEADER: str(handoff["handoff_id"]), **headers}
        try:
            # No redirects: a signed alert goes to the configured URL or nowhere.
            async with http.post(self.url, data=body, headers=headers, allow_redirects=False,
                                 timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                detail = (await resp.content.read(300)).decode("utf-8", "replace")
                if 200 <= resp.status < 300:
                    return Attempt(True)
                retriable = resp.status >= 500 or resp.status in (408, 425, 429)
                return Attempt(False, retriable, f"http_{resp.status}", detail,
                               parse_retry_after(resp.headers.get("Retry-After")))
        except TimeoutError:
            return Attempt(False, True, "timeout", f"no answer within {self.timeout:g} s")
        except aiohttp.ClientError as exc:
            return Attempt(False, True, "connection", f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a bad URL or payload: dead-letter it and keep consuming
            log.exception("%s: unexpected delivery error", self.name)
            return Attempt(False, False, "error", f"{type(exc).__name__}: {exc}")


class SlackDestination(Destination):
    name = "slack"

    def __init__(self, url: str, timeout: float, crm_template: str | None) -> None:
        super().__init__(url, timeout)
        self.crm_template = crm_template

    def request(self, handoff: dict[str, Any], raw: bytes, attempt: int) -> tuple[bytes, dict[str, str]]:
        return orjson.dumps(slack_message(handoff, self.crm_template)), {}


class WebhookDestination(Destination):
    name = "webhook"

    def __init__(self, url: str, timeout: float, secret: bytes) -> None:
        super().__init__(url, timeout)
        self.secret = secret

    def request(self, handoff: dict[str, Any], raw: bytes, attempt: int) -> tuple[bytes, dict[str, str]]:
        # The body is the handoff record exactly as published (schemas/handoff.schema.json);
        # signed afresh on every try so a late retry still falls inside the replay window.
        stamp = int(time.time())
        return raw, {
            TIMESTAMP_HEADER: str(stamp),
            SIGNATURE_HEADER: sign(self.secret, stamp, raw),
            "X-LeadPulse-Event": f"handoff.{handoff['kind']}",
            "X-LeadPulse-Attempt": str(attempt),
        }


def destinations(config: AlertSettings) -> list[Destination]:
    out: list[Destination] = []
    if config.slack_webhook_url is not None:
        out.append(SlackDestination(config.slack_webhook_url.get_secret_value(), config.alerts_timeout,
                                    config.crm_url_template))
    if config.webhook_url is not None:
        assert config.webhook_secret is not None
        out.append(WebhookDestination(config.webhook_url, config.alerts_timeout,
                                      config.webhook_secret.get_secret_value().encode()))
    return out


# --- metrics -----------------------------------------------------------------------------------


class AlertMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.deliveries = Counter(
            "leadpulse_alert_deliveries", "Delivery attempts and their end, by destination and outcome "
            "(ok, retry, failed, dead_letter).", ["destination", "outcome"], registry=r)
        self.handoffs = Counter(
            "leadpulse_alert_handoffs", "Handoffs consumed, by kind and what was done (announced, skipped, "
            "stale, duplicate, invalid, internal).", ["kind", "outcome"], registry=r)
        self.seconds = Histogram(
            "leadpulse_alert_delivery_seconds", "One delivery attempt, by destination.", ["destination"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.ready = Gauge("leadpulse_alerts_ready", "1 when consuming leads.handoff with partitions assigned.",
                           registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


# --- the service --------------------------------------------------------------------------------


class _Stopping(Exception):
    pass


async def _all(*aws: Awaitable[Any]) -> None:
    """Run side by side and let every one finish (a stop ends them all promptly), then raise
    the first failure: plain gather would leave the others running unobserved."""
    for result in await asyncio.gather(*aws, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result


class RecentIds:
    """(destination, handoff_id) pairs delivered by this process: a handoff the worker published
    twice, or a batch replayed after a rebalance, is not announced again. Bounded."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._ids: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._capacity = capacity

    def __contains__(self, item: object) -> bool:
        return item in self._ids

    def add(self, item: tuple[str, str]) -> None:
        self._ids[item] = None
        self._ids.move_to_end(item)
        while len(self._ids) > self._capacity:
            self._ids.popitem(last=False)


class AlertService:
    """Consume handoffs → deliver to each destination (retry, dead-letter) → commit."""

    def __init__(self, settings: Settings, config: AlertSettings, metrics: AlertMetrics | None = None,
                 rng: random.Random | None = None) -> None:
        self.settings = settings
        self.config = config
        self.metrics = metrics or AlertMetrics()
        self.rng = rng or random.Random()
        self.destinations = destinations(config)
        self.group_id = f"{settings.group_id}-alerts"
        self.delivered = RecentIds()
        self.assigned: set[TopicPartition] = set()
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.http: aiohttp.ClientSession | None = None
        self._stopping = asyncio.Event()
        #: set when the consuming loop died of an unexpected error: the process should exit
        self.crashed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._batch_lock = asyncio.Lock()
        self.port = 0

    @property
    def ready(self) -> bool:
        return self.consumer is not None and bool(self.assigned)

    # -- lifecycle --

    async def start(self) -> None:
        self.http = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_get("/metrics", self._metrics_view)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.config.alerts_host, self.config.alerts_port).start()
        self.port = int(self._runner.addresses[0][1])
        self._task = asyncio.create_task(self._run(), name="alerts")
        log.info("alerts: %s; metrics on http://%s:%d/metrics",
                 ", ".join(d.name for d in self.destinations), self.config.alerts_host, self.port)

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._runner is not None:
            await self._runner.cleanup()
        if self.http is not None:
            await self.http.close()

    async def _retry(self, op: Callable[[], Awaitable[Any]], what: str) -> Any:
        delay = 0.2
        while True:
            try:
                return await op()
            except (KafkaError, OSError) as exc:
                log.warning("%s failed (%s); retrying in %.1f s", what, exc, delay)
            await self._sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _sleep(self, seconds: float) -> None:
        """Wait, unless asked to stop: then give up the batch (it is consumed again later)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        if self._stopping.is_set():
            raise _Stopping

    async def _connect(self) -> None:
        s = self.settings
        await self._retry(lambda: kafka.ensure_topics(s, [s.handoff_topic, self.config.alerts_dlq_topic]),
                          "create_topics")

        async def start_producer() -> None:
            self.producer = await kafka.started(AIOKafkaProducer(**kafka.client_options(s), acks="all"))

        await self._retry(start_producer, "producer_start")
        consumer = AIOKafkaConsumer(
            **kafka.client_options(s), group_id=self.group_id, enable_auto_commit=False,
            auto_offset_reset=self.config.alerts_start_from, max_poll_records=100,
            session_timeout_ms=SESSION_TIMEOUT_MS, heartbeat_interval_ms=SESSION_TIMEOUT_MS // 3,
            # A batch may wait out retries (Retry-After up to alerts_retry_after_max per try);
            # past this interval the group would move on and the batch be replayed elsewhere.
            max_poll_interval_ms=3_600_000,
        )
        consumer.subscribe([s.handoff_topic], listener=_Rebalance(self))

        async def start_consumer() -> None:
            await consumer.start()

        await self._retry(start_consumer, "consumer_start")
        self.consumer = consumer

    async def _run(self) -> None:
        try:
            await self._connect()
            assert self.consumer is not None
            while not self._stopping.is_set():
                try:
                    batch = await self.consumer.getmany(timeout_ms=200)
                except KafkaError as exc:
                    log.warning("fetch failed (%s); retrying", exc)
                    await self._sleep(0.5)
                    continue
                self.metrics.ready.set(1 if self.ready else 0)
                if batch:
                    async with self._batch_lock:
                        await self._handle(batch)
        except _Stopping:
            log.info("stopping; the batch in progress will be consumed again")
        except Exception:
            log.exception("alerts stopped consuming; the uncommitted batch will be consumed again")
            self.crashed.set()
        finally:
            self.metrics.ready.set(0)
            if self.consumer is not None:
                await self.consumer.stop()
            if self.producer is not None:
                await self.producer.stop()

    async def _handle(self, batch: dict[TopicPartition, list[Any]]) -> None:
        # One lead's handoffs in order (mql before sql); different leads side by side.
        by_lead: dict[bytes | None, list[Any]] = {}
        for records in batch.values():
            for record in records:
                by_lead.setdefault(record.key, []).append(record)

        async def in_order(records: list[Any]) -> None:
            for record in records:
                await self._announce(record)

        await _all(*(in_order(rs) for rs in by_lead.values()))
        await self._commit({tp: OffsetAndMetadata(rs[-1].offset + 1, "") for tp, rs in batch.items()})

    async def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        assert self.consumer is not None
        await kafka.commit_owned(self.consumer, offsets, self._retry)

    # -- one handoff --

    async def _announce(self, record: Any) -> None:
        try:
            handoff = orjson.loads(record.value)
            _validate_handoff(handoff)
        except (orjson.JSONDecodeError, fastjsonschema.JsonSchemaException, TypeError) as exc:
            self.metrics.handoffs.labels("unknown", "invalid").inc()
            await self._dead_letter(record, "-", "invalid_handoff", str(exc), 0)
            return
        try:
            pending = self._pending(handoff)
        except Exception as exc:  # noqa: BLE001 - schema-valid, yet unreadable here (crossed_at in year 0…)
            self.metrics.handoffs.labels("unknown", "internal").inc()
            await self._dead_letter(record, "-", "internal", f"{type(exc).__name__}: {exc}", 0)
            return
        if pending:
            await _all(*(self._deliver(d, handoff, record) for d in pending))

    def _pending(self, handoff: dict[str, Any]) -> list[Destination]:
        """The destinations still to hear of a handoff (none when it is skipped)."""
        kind = handoff["kind"]
        if kind == "demoted" and not self.config.alerts_demotions:
            self.metrics.handoffs.labels(kind, "skipped").inc()
            return []
        max_age = self.config.alerts_max_age
        crossed = datetime.fromisoformat(handoff["crossed_at"]).timestamp()
        if max_age and time.time() - crossed > max_age:
            self.metrics.handoffs.labels(kind, "stale").inc()
            log.info("skipping handoff %s: crossed %.0f s ago", handoff["handoff_id"], time.time() - crossed)
            return []
        pending = [d for d in self.destinations if (d.name, handoff["handoff_id"]) not in self.delivered]
        self.metrics.handoffs.labels(kind, "announced" if pending else "duplicate").inc()
        return pending

    async def _deliver(self, dest: Destination, handoff: dict[str, Any], record: Any) -> None:
        assert self.http is not None
        cfg = self.config
        for attempt in range(1, cfg.alerts_max_attempts + 1):
            started = time.monotonic()
            result = await dest.send(self.http, handoff, record.value, attempt)
            self.metrics.seconds.labels(dest.name).observe(time.monotonic() - started)
            if result.ok:
                self.metrics.deliveries.labels(dest.name, "ok").inc()
                self.delivered.add((dest.name, handoff["handoff_id"]))
                return
            last = attempt == cfg.alerts_max_attempts or not result.retriable
            self.metrics.deliveries.labels(dest.name, "failed" if last else "retry").inc()
            log.warning("%s: handoff %s try %d/%d failed: %s %s", dest.name, handoff["handoff_id"], attempt,
                        cfg.alerts_max_attempts, result.reason, result.detail[:200])
            if last:
                break
            delay = backoff_delay(attempt, cfg.alerts_backoff, cfg.alerts_backoff_max, self.rng)
            if result.retry_after is not None:
                delay = max(delay, min(result.retry_after, cfg.alerts_retry_after_max))
            await self._sleep(delay)
        await self._dead_letter(record, dest.name, result.reason, result.detail, attempt)

    async def _dead_letter(self, record: Any, destination: str, reason: str, detail: str, attempts: int) -> None:
        """The handoff unchanged (replayable) with why it was not delivered in headers."""
        headers = [
            ("leadpulse.alert.destination", destination.encode()),
            ("leadpulse.alert.reason", reason.encode()),
            ("leadpulse.alert.message", detail.encode("utf-8", "backslashreplace")[:2048]),
            ("leadpulse.alert.attempts", str(attempts).encode()),
            ("leadpulse.alert.topic", record.topic.encode()),
            ("leadpulse.alert.partition", str(record.partition).encode()),
            ("leadpulse.alert.offset", str(record.offset).encode()),
            ("leadpulse.alert.time", datetime.now(UTC).isoformat(timespec="milliseconds").encode()),
        ]

        async def send() -> None:
            assert self.producer is not None
            await (await self.producer.send(self.config.alerts_dlq_topic, record.value, key=record.key,
                                            headers=headers))

        # Never commit past an alert that is neither delivered nor dead-lettered.
        await self._retry(send, "dead_letter")
        self.metrics.deliveries.labels(destination, "dead_letter").inc()
        log.error("%s: handoff at %s:%d:%d dead-lettered to %s (%s)", destination, record.topic, record.partition,
                  record.offset, self.config.alerts_dlq_topic, reason)

    # -- HTTP --

    async def _metrics_view(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        return web.json_response({"ready": self.ready, "partitions_assigned": len(self.assigned)},
                                 status=200 if self.ready else 503)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: AlertService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Let the batch in flight finish and commit while we still own its partitions.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.service._batch_lock.acquire(), timeout=30)
            self.service._batch_lock.release()
        self.service.assigned -= set(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.service.assigned = set(assigned)
        log.info("alerts: assigned %d partitions of %s", len(assigned), self.service.settings.handoff_topic)


# --- command -------------------------------------------------------------------------------------

KAFKA_FIELDS = ("kafka_bootstrap", "kafka_security_protocol", "kafka_sasl_mechanism", "kafka_sasl_username",
                "kafka_sasl_password", "kafka_ssl_cafile", "group_id", "handoff_topic", "partitions",
                "replication_factor", "log_level")


def run_alerts(settings: Settings, config: AlertSettings) -> None:
    service = AlertService(settings, config)
    asyncio.run(serve_until_signalled(service.start, service.stop, service.crashed))
    if service.crashed.is_set():
        sys.exit(1)  # let the supervisor restart us rather than serve metrics without consuming


@click.command()
@settings_flags([(Settings, f) for f in KAFKA_FIELDS] + [(AlertSettings, f) for f in AlertSettings.model_fields])
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help=f"YAML config file; its alerts: section is read [env {CONFIG_ENV}]")
@click.option("--print-config", is_flag=True, help="print the settings (secrets masked) and exit")
def alerts(config_file: Path | None, print_config: bool, **options: Any) -> None:
    """Announce handoffs from leads.handoff in Slack and on a signed JSON webhook."""

    def run() -> None:
        kafka_options, own = split_options(options, Settings, AlertSettings)
        settings = load_settings(**kafka_options)
        config = load_alert_settings(config_file, **own)
        if print_config:
            shown = {k: v for k, v in settings.masked().items() if k in KAFKA_FIELDS}
            click.echo(orjson.dumps({**shown, **config.masked()}, option=orjson.OPT_INDENT_2).decode())
            return
        configure_logging(settings.log_level)
        run_alerts(settings, config)

    run_command(run)
