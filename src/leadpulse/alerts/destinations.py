"""Where alerts go, and what they say: a Slack message, a signed webhook; one try at a time.

A try's outcome (`Attempt`) says whether another try may succeed: 5xx, 408, 425, 429, a
timeout or a lost connection may; another 4xx or a handoff a destination cannot render may not.
The service (service.py) decides how long to wait and when to give up. docs/integrations.md
documents the payloads and how a receiver checks the signature.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar
from urllib.parse import quote

import aiohttp
import orjson

from .. import __version__
from .config import AlertSettings

log = logging.getLogger("leadpulse.alerts")

SIGNATURE_HEADER = "X-LeadPulse-Signature"
TIMESTAMP_HEADER = "X-LeadPulse-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: receivers reject signatures older than this (docs/integrations.md)
REPLAY_WINDOW_S = 300
TOP_REASONS = 5


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
    elif handoff["kind"] == "sla_overdue":  # a reminder: the SQL waits on sales (docs/scoring.md §10)
        headline = f":alarm_clock: {who} is still an unanswered *{_mrkdwn(stage)}*: past the sales SLA"
        text = f"⏰ {lead} is still an unanswered {stage}, past the sales SLA: score {score:.0f}, fit grade {grade}"
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
