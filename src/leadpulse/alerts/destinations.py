"""Where alerts go: a Slack message (its text: slack.py), a signed webhook; one try at a time.

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

import aiohttp
import orjson

from .. import __version__
from .config import AlertSettings, routed
from .slack import slack_message

log = logging.getLogger("leadpulse.alerts")

SIGNATURE_HEADER = "X-LeadPulse-Signature"
TIMESTAMP_HEADER = "X-LeadPulse-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: receivers reject signatures older than this (docs/integrations.md)
REPLAY_WINDOW_S = 300


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
    #: slack | webhook
    type: ClassVar[str]

    def __init__(self, name: str, url: str, timeout: float) -> None:
        self.name = name  # the configured name: metrics, logs, dead letters
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
    type = "slack"

    def __init__(self, name: str, url: str, timeout: float, crm_template: str | None) -> None:
        super().__init__(name, url, timeout)
        self.crm_template = crm_template

    def request(self, handoff: dict[str, Any], raw: bytes, attempt: int) -> tuple[bytes, dict[str, str]]:
        return orjson.dumps(slack_message(handoff, self.crm_template)), {}


class WebhookDestination(Destination):
    type = "webhook"

    def __init__(self, name: str, url: str, timeout: float, secret: bytes) -> None:
        super().__init__(name, url, timeout)
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


def destinations(config: AlertSettings) -> dict[str, Destination]:
    """Every configured destination by name (config.routed: the legacy pair, then the routed ones)."""
    out: dict[str, Destination] = {}
    for d in routed(config):
        if d.slack_webhook_url is not None:
            out[d.name] = SlackDestination(d.name, d.slack_webhook_url.get_secret_value(), config.alerts_timeout,
                                           config.crm_url_template)
        else:
            assert d.webhook_url is not None and d.secret is not None
            out[d.name] = WebhookDestination(d.name, d.webhook_url, config.alerts_timeout,
                                             d.secret.get_secret_value().encode())
    return out
