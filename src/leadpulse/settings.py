"""Settings, modelled once, for every process: LEADPULSE_* environment variables, the same
options as CLI flags (cliopts.py), and for the collector and alerts a section of a YAML file
(`--config` / LEADPULSE_CONFIG). Precedence: flags, then environment, then the file, then defaults.

Secrets are `SecretStr`, and `masked()` is what gets printed or logged.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import BeforeValidator, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from .durations import parse_ms
from .errors import ConfigError
from .who import DEFAULT_WHO, parse_who

CONFIG_ENV = "LEADPULSE_CONFIG"
#: a duration setting: "400d", "12h", "90s" or a number of seconds, kept in ms
DurationMs = Annotated[int, BeforeValidator(parse_ms)]
S = TypeVar("S", bound="BaseConfig")

# The config file's section for the class being loaded: pydantic-settings builds its sources per
# instantiation and passes them nothing, so `load` hands the section over here.
_file_section: ContextVar[dict[str, Any] | None] = ContextVar("leadpulse_config_section", default=None)


def read_config_section(path: Path, section: str) -> dict[str, Any]:
    """One top-level section of the YAML config file (`collector:`, `alerts:`)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections (collector:, alerts:)")
    part = data.get(section) or {}
    if not isinstance(part, dict):
        raise ConfigError(f"config file {path}: section {section!r} must be a mapping")
    return part


class _SectionSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return (_file_section.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in (_file_section.get() or {}).items() if k in self.settings_cls.model_fields}


def cut_password(url: str) -> str:
    """A URL as it may be shown: its password replaced (redis://user:***@host)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


def cut_query(url: str) -> str:
    """A URL as it may be shown: tokens often ride in the query, so it goes."""
    return url.split("?", 1)[0] + "?***" if urlsplit(url).query else url


def _shown(value: Any, partly: Callable[[str], str] | None = None) -> Any:
    if isinstance(value, SecretStr):
        return partly(value.get_secret_value()) if partly else "***"
    if isinstance(value, str) and partly:
        return partly(value)
    if isinstance(value, tuple):
        return [_shown(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "masked"):
        return value.masked()
    return value


class BaseConfig(BaseSettings):
    """LEADPULSE_* settings; a class with a `config_section` also reads that section of the file."""

    model_config = SettingsConfigDict(env_prefix="LEADPULSE_", frozen=True, extra="ignore")
    #: the config file's section this class reads ("": it reads no file)
    config_section: ClassVar[str] = ""
    #: fields shown in part by `masked()` (a URL without its password), by how
    partly_masked: ClassVar[dict[str, Callable[[str], str]]] = {}

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _SectionSource(settings_cls)

    def masked(self) -> dict[str, Any]:
        """The settings as they may be printed or logged: secrets replaced, passwords cut from URLs."""
        return {name: _shown(getattr(self, name), self.partly_masked.get(name)) for name in type(self).model_fields}


def load(cls: type[S], config: Path | None = None, **overrides: Any) -> S:
    """`cls` from flags (`overrides`, None = not given), LEADPULSE_* variables and, for a class
    with a section, the config file (`config`, else LEADPULSE_CONFIG). Errors are one line."""
    section: dict[str, Any] = {}
    path = config or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    if cls.config_section and path:
        section = read_config_section(path, cls.config_section)
        unknown = sorted(set(section) - set(cls.model_fields))
        if unknown:
            raise ConfigError(f"config file {path}: unknown key {cls.config_section}.{unknown[0]} "
                              f"(known: {', '.join(cls.model_fields)})")
    token = _file_section.set(section)
    try:
        return cls(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        # a misspelt key also makes the real one "missing": name the misspelling first
        err = min(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        name = str(err["loc"][0]) if err["loc"] else where
        msg = str(err["msg"]).removeprefix("Value error, ")
        if name in section and overrides.get(name) is None and f"LEADPULSE_{name.upper()}" not in os.environ:
            raise ConfigError(f"config file {path}: {cls.config_section}.{where}: {msg}") from None
        raise ConfigError(f"invalid setting {where} (LEADPULSE_{name.upper()}): {msg}") from None
    finally:
        _file_section.reset(token)


class Settings(BaseConfig):
    """What the worker needs, and the other commands the parts they share (Kafka, topics, Redis)."""

    partly_masked: ClassVar[dict[str, Callable[[str], str]]] = {"redis_url": cut_password}

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
    shadow_model: Path | None = Field(
        None, description="a candidate model YAML scored beside the active one on every event, in its own "
        "key space; its handoffs go to LEADPULSE_SHADOW_TOPIC, never to sales (docs/scoring.md §9)")
    shadow_topic: str = Field("leads.handoff.shadow", description="where the shadow model's handoffs are published")
    outcomes_topic: str = Field("leads.outcomes", description="where CRM outcomes are published as labelled examples (schemas/outcome.schema.json)")
    dlq_topic: str = Field("events.dlq", description="where events that cannot be scored go")
    partitions: int = Field(8, ge=1, description="partitions of topics created at start")
    replication_factor: int = Field(1, ge=1, description="replication of topics created at start")
    batch_max: int = Field(2000, ge=1, description="most events per batch")
    batch_wait_ms: int = Field(20, ge=0, description="longest the broker holds a fetch open for events (fetch.max.wait.ms)")
    sweep_interval: float = Field(5.0, gt=0, description="seconds between decay-demotion sweeps")
    reeval_rate: float = Field(2000.0, gt=0, description="leads a second decided again after a model change "
                               "(by the sweeping worker)")
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
    handoff_who: Annotated[dict[str, str], NoDecode, BeforeValidator(parse_who)] = Field(
        default_factory=lambda: dict(DEFAULT_WHO),
        description="who a handoff names: field=trait pairs, comma-separated, or a JSON object; a bare field "
        "comes from the trait of its name; empty for none (PII-minimal). Default name,email,title=job_title,"
        "company,domain=company_domain,country,owner (who.py)")
    crm_url_template: str | None = Field(
        None, description="a handoff's crm_url: a link to the lead in the CRM, {lead_id} replaced (URL-encoded)")
    activity_max: int = Field(50, ge=0, le=10_000, description="entries of each lead's activity log kept for the "
                              "board's lead page (its newest scored events and moves; 0: none)")
    api_token: SecretStr | None = Field(None, description="bearer token for reading the HTTP API; also the "
                                        "board's sign-in")
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
        from .events import SOURCES  # the contract, loaded when a process needs its topics

        return {f"{self.topic_prefix}{source}": source for source in SOURCES}


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with CLI flags (not None) taking precedence."""
    return load(Settings, **overrides)
