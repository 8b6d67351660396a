"""Settings, modelled once: `LEADPULSE_*` environment variables, the same options as CLI flags.

Secrets are `SecretStr` and `masked()` is what gets printed or logged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BeforeValidator, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .durations import parse_ms
from .errors import ConfigError

SOURCES = ("web", "email", "webinar", "profile", "crm")
#: a duration setting: "400d", "12h", "90s" or a number of seconds, kept in ms
DurationMs = Annotated[int, BeforeValidator(parse_ms)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEADPULSE_", frozen=True, extra="ignore")

    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,host:port]")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism"
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password")
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle for Kafka TLS")
    redis_url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"),
        description="Redis URL; rediss:// for TLS, redis://user:password@host for ACLs",
    )
    redis_cluster: bool = Field(False, description="LEADPULSE_REDIS_URL names a node of a Redis Cluster")
    model: Path | None = Field(None, description="scoring model YAML (default: the model shipped with LeadPulse)")
    http_host: str = Field("127.0.0.1", description="address the HTTP API listens on")
    http_port: int = Field(6066, ge=1, le=65535, description="HTTP API port")
    group_id: str = Field("leadpulse", description="Kafka consumer group of the workers")
    topic_prefix: str = Field("events.", description="input topics are <prefix><source>")
    handoff_topic: str = Field("leads.handoff", description="where handoffs are published")
    outcomes_topic: str = Field("leads.outcomes", description="where CRM outcomes are published as labelled examples (schemas/outcome.schema.json)")
    dlq_topic: str = Field("events.dlq", description="where events that cannot be scored go")
    partitions: int = Field(8, ge=1, description="partitions of topics created at start")
    replication_factor: int = Field(1, ge=1, description="replication of topics created at start")
    batch_max: int = Field(2000, ge=1, description="most events per batch")
    batch_wait_ms: int = Field(20, ge=0, description="longest the broker holds a fetch open for events (fetch.max.wait.ms)")
    sweep_interval: float = Field(5.0, gt=0, description="seconds between decay-demotion sweeps")
    max_event_bytes: int = Field(64 * 1024, ge=256, description="larger messages go to the DLQ")
    lead_ttl: DurationMs = Field(
        "400d", description="a lead in the first stage is forgotten this long after its last event (0: never; "
        "at least the model's dedup_window)")
    anon_ttl: DurationMs = Field(
        "90d", gt=0, description="an anonymous visitor's events are kept this long after its last one, until "
        "it is linked to a lead")
    anon_max_events: int = Field(1000, ge=1, description="most events kept per anonymous visitor (the latest)")
    alias_ttl: DurationMs = Field("400d", description="a visitor's link to its lead is kept this long (0: forever)")
    tombstone_ttl: DurationMs = Field(
        "400d", description="an erased lead's events are refused this long; at least the input topics' "
        "retention (0: forever)")
    api_token: SecretStr | None = Field(None, description="bearer token for reading the HTTP API")
    admin_token: SecretStr | None = Field(None, description="bearer token for state-changing HTTP calls")
    protect_metrics: bool = Field(False, description="require the API token for /metrics too")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"{server!r} is not host:port")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: SecretStr) -> SecretStr:
        if urlsplit(value.get_secret_value()).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @property
    def input_topics(self) -> dict[str, str]:
        return {f"{self.topic_prefix}{source}": source for source in SOURCES}

    def masked(self) -> dict[str, Any]:
        """The settings as they may be printed: secrets replaced, passwords cut from URLs."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                if name == "redis_url":
                    parts = urlsplit(value.get_secret_value())
                    netloc = parts.netloc
                    if parts.password is not None:
                        netloc = netloc.replace(f":{parts.password}@", ":***@")
                    value = urlunsplit(parts._replace(netloc=netloc))
                else:
                    value = "***"
            elif isinstance(value, Path):
                value = str(value)
            out[name] = value
        return out


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with CLI flags (not None) taking precedence."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"invalid setting {where} (LEADPULSE_{where.upper()}): {msg}") from None
