"""The event contract: bytes from Kafka in, a validated `Event` out, or `InvalidEvent`.

The JSON Schema in schemas/event.schema.json is the contract; it is compiled once (fastjsonschema)
and the error it raises names the field and the reason.
"""

from __future__ import annotations

import math
from datetime import datetime
from importlib.resources import files
from typing import Any, NamedTuple

import fastjsonschema
import orjson

from .errors import InvalidEvent

MAX_EVENT_BYTES = 64 * 1024


def load_schema(name: str) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(files("leadpulse").joinpath("schemas", name).read_bytes())
    return data


_SCHEMA = load_schema("event.schema.json")


def _compile(name: str) -> Any:
    # One validator per part: the envelope, then the source's own part. Dispatching on source in
    # Python spares every event the failed `if` branches of the other sources (exceptions are slow).
    return fastjsonschema.compile({"$defs": _SCHEMA["$defs"], "$ref": f"#/$defs/{name}"})


_validate_envelope = _compile("envelope")
_validate_source = {name: _compile(name) for name in ("web", "email", "webinar", "profile", "crm")}


class Event(NamedTuple):
    event_id: str
    source: str
    type: str
    occurred_at: int  # epoch milliseconds
    lead_id: str | None
    anonymous_id: str | None
    properties: dict[str, Any]
    traits: dict[str, Any]


def _reason(exc: fastjsonschema.JsonSchemaValueException) -> InvalidEvent:
    field = exc.name.removeprefix("data").lstrip(".") or None
    if field == "source":
        return InvalidEvent("unknown_source", "source must be one of web, email, webinar, profile, crm", field)
    if field == "type":
        return InvalidEvent("unknown_type", "type is not one this source sends (see schemas/event.schema.json)", field)
    if exc.rule == "anyOf" and field is None:
        return InvalidEvent("missing_id", "an event needs lead_id or anonymous_id")
    if exc.rule == "required":
        return InvalidEvent("missing_field", exc.message.removeprefix("data").lstrip(". "), field)
    return InvalidEvent("schema", exc.message.removeprefix("data").lstrip(". "), field)


def _check_finite(values: dict[str, Any], where: str) -> None:
    # orjson already rejects NaN/Infinity literals; a float overflowing to inf (1e999) gets here.
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidEvent("non_finite", "numbers must be finite", f"{where}.{key}")


def parse_time(value: str | int) -> int:
    if isinstance(value, int):
        return value
    try:
        stamp = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise InvalidEvent("bad_timestamp", f"{value!r} is not an RFC 3339 date-time", "occurred_at") from None
    if stamp.tzinfo is None:
        raise InvalidEvent("bad_timestamp", "occurred_at needs a UTC offset", "occurred_at")
    ms = int(stamp.timestamp() * 1000)
    if ms < 0:
        raise InvalidEvent("bad_timestamp", "occurred_at is before 1970", "occurred_at")
    return ms


def from_dict(data: Any, now_ms: int, skew_ms: int) -> Event:
    if not isinstance(data, dict):
        raise InvalidEvent("schema", "an event must be a JSON object")
    if "lead_id" not in data and "anonymous_id" not in data:
        raise InvalidEvent("missing_id", "an event needs lead_id or anonymous_id")
    try:
        _validate_envelope(data)
        _validate_source[data["source"]](data)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise _reason(exc) from None
    occurred_at = parse_time(data["occurred_at"])
    if occurred_at > now_ms + skew_ms:
        raise InvalidEvent(
            "future_timestamp", f"occurred_at is more than {skew_ms} ms ahead of the clock", "occurred_at"
        )
    properties = data.get("properties") or {}
    traits = data.get("traits") or {}
    _check_finite(properties, "properties")
    _check_finite(traits, "traits")
    return Event(
        data["event_id"],
        data["source"],
        data["type"],
        occurred_at,
        data.get("lead_id"),
        data.get("anonymous_id"),
        properties,
        traits,
    )


def parse(raw: bytes, now_ms: int, skew_ms: int, max_bytes: int = MAX_EVENT_BYTES) -> Event:
    """Validate one Kafka message value. Raises InvalidEvent with a stable reason code."""
    if len(raw) > max_bytes:
        raise InvalidEvent("too_large", f"{len(raw)} bytes is over the {max_bytes}-byte limit")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("invalid_json", str(exc)) from None
    return from_dict(data, now_ms, skew_ms)


def to_dict(event: Event) -> dict[str, Any]:
    out: dict[str, Any] = {
        "event_id": event.event_id,
        "source": event.source,
        "type": event.type,
        "occurred_at": event.occurred_at,
    }
    if event.lead_id is not None:
        out["lead_id"] = event.lead_id
    if event.anonymous_id is not None:
        out["anonymous_id"] = event.anonymous_id
    if event.properties:
        out["properties"] = event.properties
    if event.traits:
        out["traits"] = event.traits
    return out
