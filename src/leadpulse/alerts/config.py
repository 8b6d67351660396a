"""The alerts service's settings: its `alerts:` section of the config file, LEADPULSE_* variables, flags."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import orjson
from pydantic import Field, SecretStr, field_validator

from ..errors import ConfigError
from ..settings import BaseConfig, cut_query, load
from .routing import KINDS, LIFECYCLE_KINDS, DestinationConfig

#: the worker settings alerts uses: where Kafka is, its group and the handoff topic
KAFKA_FIELDS = ("kafka_bootstrap", "kafka_security_protocol", "kafka_sasl_mechanism", "kafka_sasl_username",
                "kafka_sasl_password", "kafka_ssl_cafile", "group_id", "handoff_topic", "partitions",
                "replication_factor", "log_level")


def _http_url(value: str | None, name: str) -> str | None:
    if value is None or value == "":
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name} must be an http:// or https:// URL")
    return value


class AlertSettings(BaseConfig):
    config_section: ClassVar[str] = "alerts"
    partly_masked: ClassVar[dict[str, Callable[[str], str]]] = {"webhook_url": cut_query}

    slack_webhook_url: SecretStr | None = Field(None, description="Slack incoming-webhook URL (a secret)")
    webhook_url: str | None = Field(None, description="generic JSON webhook URL, signed with HMAC-SHA256")
    webhook_secret: SecretStr | None = Field(None, description="HMAC-SHA256 key for the webhook signature")
    crm_url_template: str | None = Field(
        None, description="link to a lead in the CRM; {lead_id} is replaced (URL-encoded)"
    )
    alerts_host: str = Field("127.0.0.1", description="address of the alerts metrics server")
    alerts_port: int = Field(6068, ge=0, le=65535, description="alerts metrics port (0: any free port)")
    alerts_demotions: bool = Field(False, description="also announce demotions (a lead leaving a stage)")
    alerts_lifecycle: bool = Field(False, description="also announce CRM-driven moves (kinds advanced, closed, "
                                   "recycled): sales made them, they are not news to sales")
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
    destinations: tuple[DestinationConfig, ...] = Field(
        (), description="routed destinations, each with filters (JSON list; docs/integrations.md, Routing); "
        "besides LEADPULSE_SLACK_WEBHOOK_URL / LEADPULSE_WEBHOOK_URL")
    owners: dict[str, str] = Field(
        default_factory=dict, description="SLA reminders: owner (the handoff's who.<owner_field>) -> destination name")
    owner_field: str = Field("owner", min_length=1, description="the who field naming a lead's owner")

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        return _http_url(value, "webhook_url")

    @field_validator("destinations", "owners", mode="before")
    @classmethod
    def _json(cls, value: Any) -> Any:
        """A flag's value is text: JSON, as in the environment."""
        if isinstance(value, str):
            try:
                return orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"not JSON: {exc}") from None
        return value

    @field_validator("slack_webhook_url")
    @classmethod
    def _slack(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and _http_url(value.get_secret_value(), "slack_webhook_url") is None:
            return None
        return value


def load_alert_settings(config: Path | None = None, **overrides: Any) -> AlertSettings:
    settings = load(AlertSettings, config, **overrides)
    if settings.slack_webhook_url is None and settings.webhook_url is None and not settings.destinations:
        raise ConfigError("no alert destination: set LEADPULSE_SLACK_WEBHOOK_URL and/or LEADPULSE_WEBHOOK_URL, "
                          "or alerts.destinations in the config file")
    if settings.webhook_url and settings.webhook_secret is None:
        raise ConfigError("LEADPULSE_WEBHOOK_URL needs LEADPULSE_WEBHOOK_SECRET: webhook calls are always signed")
    routed(settings)  # names unique, owners known
    return settings


def legacy(config: AlertSettings) -> list[DestinationConfig]:
    """LEADPULSE_SLACK_WEBHOOK_URL and LEADPULSE_WEBHOOK_URL as destinations named `slack` and
    `webhook`, doing what they did before routing: every promotion and SLA reminder, demotions
    with LEADPULSE_ALERTS_DEMOTIONS, CRM-driven moves with LEADPULSE_ALERTS_LIFECYCLE; Slack is
    suppressed as a sales channel, the webhook (often a CRM bridge) is not: the record says
    `do_not_contact` for the receiver to act on."""
    kinds = tuple(k for k in KINDS if (k != "demoted" or config.alerts_demotions)
                  and (k not in LIFECYCLE_KINDS or config.alerts_lifecycle))
    out = []
    if config.slack_webhook_url is not None:
        out.append(DestinationConfig.model_validate(
            {"name": "slack", "slack_webhook_url": config.slack_webhook_url, "kinds": kinds}))
    if config.webhook_url is not None:
        out.append(DestinationConfig.model_validate(
            {"name": "webhook", "webhook_url": config.webhook_url, "secret": config.webhook_secret, "kinds": kinds,
             "suppress": False}))
    return out


def routed(config: AlertSettings) -> list[DestinationConfig]:
    """Every destination: the legacy pair, then alerts.destinations; names unique, owners known."""
    out = [*legacy(config), *config.destinations]
    seen: set[str] = set()
    for i, d in enumerate(out):
        if d.name in seen:
            where = f"destinations[{i - len(out) + len(config.destinations)}].name"
            raise ConfigError(f"alerts.{where}: {d.name!r} is used twice (slack and webhook are the names of "
                              "LEADPULSE_SLACK_WEBHOOK_URL and LEADPULSE_WEBHOOK_URL)")
        seen.add(d.name)
    for owner, name in config.owners.items():
        if name not in seen:
            raise ConfigError(f"alerts.owners.{owner}: no destination named {name!r}")
    return out
