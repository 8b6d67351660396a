"""The collector's settings: its `collector:` section of the config file, LEADPULSE_* variables, flags."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar

import orjson
from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from ..errors import ConfigError
from ..settings import BaseConfig, load
from . import segment
from .writekeys import WriteKey, parse_write_keys

#: Segment's own limits, which its client libraries already respect
MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
#: Segment's libraries send batches of 100 (analytics-python, -node) or fewer (analytics.js)
MAX_BATCH_MESSAGES = 2500
#: the worker settings the collector uses: where Kafka is, the topics, the model (clock skew)
KAFKA_FIELDS = ("kafka_bootstrap", "kafka_security_protocol", "kafka_sasl_mechanism", "kafka_sasl_username",
                "kafka_sasl_password", "kafka_ssl_cafile", "topic_prefix", "partitions", "replication_factor",
                "max_event_bytes", "model", "log_level")


class CollectorSettings(BaseConfig):
    config_section: ClassVar[str] = "collector"

    collector_host: str = Field("127.0.0.1", description="address the collector listens on (0.0.0.0 for all)")
    collector_port: int = Field(6067, ge=0, le=65535, description="collector HTTP port (0: any free port)")
    write_keys: Annotated[tuple[WriteKey, ...], NoDecode] = Field(
        (), description="accepted Segment write keys, comma-separated (plain keys may send every source), "
                        "or a JSON list of {key, kind, sources, types, rate_limit, rate_burst} (docs/integrations.md)"
    )
    track_events: Annotated[dict[str, str | None], NoDecode] = Field(
        default_factory=dict,
        description='track event name → source/type, JSON (e.g. {"Trial Started": "web/form_submit"}); '
                    "added to the default map, null removes a default",
    )
    collector_max_message_bytes: int = Field(MAX_MESSAGE_BYTES, ge=1024, description="largest message (413 above)")
    collector_max_batch_bytes: int = Field(MAX_BATCH_BYTES, ge=1024, description="largest request body, decompressed too (413 above)")
    collector_produce_timeout: float = Field(10.0, gt=0, description="seconds to wait for Kafka's acknowledgement before 503")
    collector_cors_origins: str = Field("*", description="origins browsers may send from, comma-separated (* for any)")
    collector_max_batch_messages: int = Field(MAX_BATCH_MESSAGES, ge=1, description="most messages in one batch (413 above)")
    collector_header_timeout: float = Field(
        10.0, gt=0, description="seconds from connecting (or the previous answer) to a complete request line and "
                                "headers; also how long an idle connection is kept")
    collector_body_timeout: float = Field(30.0, gt=0, description="seconds to receive a whole request body (408 above)")
    collector_max_connections: int = Field(1024, ge=1, description="open connections at most (503 above)")
    collector_rate_limit: float = Field(
        500.0, ge=0, description="events a second per write key, unless the key sets its own (429 above; 0: no limit)")
    collector_rate_burst: int = Field(5000, ge=1, description="events at once per write key, unless the key sets its own")

    @field_validator("write_keys", mode="before")
    @classmethod
    def _keys(cls, value: Any) -> Any:
        return parse_write_keys(value)

    @field_validator("track_events", mode="before")
    @classmethod
    def _events(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = orjson.loads(value) if value.strip() else {}
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"not a JSON object: {exc}") from None
        if not isinstance(value, Mapping):
            raise ValueError("must map track event names to source/type")  # noqa: TRY004 - pydantic wants ValueError
        out: dict[str, str | None] = {}
        for name, target in value.items():
            parsed = segment.parse_target(target)
            out[str(name)] = None if parsed is None else "/".join(parsed)
        return out

    @property
    def event_map(self) -> dict[str, tuple[str, str]]:
        return segment.track_map(self.track_events)


def load_collector_settings(config: Path | None = None, **overrides: Any) -> CollectorSettings:
    settings = load(CollectorSettings, config, **overrides)
    if not settings.write_keys:
        raise ConfigError("no write key: set LEADPULSE_WRITE_KEYS (comma-separated) or collector.write_keys "
                          "in the config file; the collector accepts nothing without one")
    return settings


