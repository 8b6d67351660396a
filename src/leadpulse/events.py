"""The event contract: bytes from Kafka in, a validated `Event` out, or `InvalidEvent`.

The JSON Schema in schemas/event.schema.json is the contract. It is compiled twice, once each:

- into a *fast check* (fastcheck.py): straight-line Python that answers only "certainly valid" —
  no exceptions, no error messages, strict types. Nearly every event takes this path alone
  (~1 µs instead of ~20 µs).
- with fastjsonschema, whose error names the field and the reason. It decides every event the fast
  check does not accept, so anything the fast check is unsure of gets exactly the old verdict.

The fast check is sound by construction: it supports a small set of keywords, and a schema using
any other keyword disables it (every event then takes the fastjsonschema path): `FAST_CHECK.active`
says whether it is on, and a warning is logged when it is not.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime
from importlib.resources import files
from typing import Any, Literal, NamedTuple

import fastjsonschema
import orjson

from .durations import format_ms
from .errors import InvalidEvent
from .fastcheck import compile_check

MAX_EVENT_BYTES = 64 * 1024
log = logging.getLogger(__name__)


def load_schema(name: str) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(files("leadpulse").joinpath("schemas", name).read_bytes())
    return data


_SCHEMA = load_schema("event.schema.json")
#: the sources events come from, as the contract names them: every list of sources is this one
SOURCES: tuple[str, ...] = tuple(_SCHEMA["$defs"]["envelope"]["properties"]["source"]["enum"])
#: one of SOURCES, for pydantic models (a Literal built at import, so it names them in errors)
Source = Literal[SOURCES]  # type: ignore[valid-type]
_DEFS = _SCHEMA["$defs"]

# What the contract names, read from it so that nothing else keeps a copy that can drift.
#: the event types each source sends
EVENT_TYPES: dict[str, tuple[str, ...]] = {
    s: tuple(_DEFS[s]["properties"]["type"]["enum"]) for s in SOURCES
}
#: the properties the contract defines per source (others are allowed: properties are free-form)
EVENT_PROPERTIES: dict[str, frozenset[str]] = {
    s: frozenset(_DEFS[s]["properties"].get("properties", {}).get("properties", {})) for s in EVENT_TYPES
}
#: the traits the contract defines (others are allowed as custom traits)
KNOWN_TRAITS = frozenset(_DEFS["envelope"]["properties"]["traits"]["properties"])


def _compile(name: str) -> Any:
    # One validator per part: the envelope, then the source's own part. Dispatching on source in
    # Python spares every event the failed `if` branches of the other sources (exceptions are slow).
    return fastjsonschema.compile({"$defs": _SCHEMA["$defs"], "$ref": f"#/$defs/{name}"})


_validate_envelope = _compile("envelope")
_validate_source = {name: _compile(name) for name in SOURCES}


FAST_CHECK = compile_check(_SCHEMA)
if not FAST_CHECK.active:
    log.warning("the event schema's fast check is off (%s): every event takes the full validator", FAST_CHECK.reason)
_fast_valid = FAST_CHECK.check


def integer_paths(schema: dict[str, Any]) -> frozenset[tuple[str, ...]]:
    """Where the contract wants an integer (not any number), as key paths: JSON Schema's integer
    is a number without a fraction, so the validator takes 2.0 there, and `_integral` turns it
    into 2 before any code that counts on an int sees it."""
    found: set[tuple[str, ...]] = set()

    def walk(node: Any, path: tuple[str, ...], depth: int) -> None:
        if not isinstance(node, dict) or depth > 32:
            return
        if "$ref" in node:
            target: Any = schema
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            walk(target, path, depth + 1)
        kinds = node.get("type")
        kinds = [kinds] if isinstance(kinds, str) else kinds or []
        if "integer" in kinds and "number" not in kinds:
            found.add(path)
        for key in ("allOf", "anyOf", "oneOf"):
            for sub in node.get(key, ()):
                walk(sub, path, depth + 1)
        for key in ("then", "else"):
            walk(node.get(key), path, depth + 1)
        for name, sub in node.get("properties", {}).items():
            walk(sub, (*path, name), depth + 1)

    walk(schema, (), 0)
    return frozenset(found)


_INTEGERS = integer_paths(_SCHEMA)


def _integral(data: dict[str, Any]) -> None:
    """Integral floats where the contract wants an integer become ints (validated data only:
    the schema bounds each such field, so the int stays small)."""
    for path in _INTEGERS:
        parent: Any = data
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and type(parent.get(path[-1])) is float:
            parent[path[-1]] = int(parent[path[-1]])


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


def parse_time(value: str | float) -> int:
    if isinstance(value, (int, float)):  # epoch ms: a fraction of a millisecond is dropped
        return int(value)
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


def from_dict(data: Any, now_ms: int, skew_ms: int, max_age_ms: int | None = None) -> Event:
    return _from_dict(data, now_ms, skew_ms, True, max_age_ms, now_ms)


def _from_dict(data: Any, now_ms: int, skew_ms: int, check_finite: bool,
               max_age_ms: int | None = None, arrived_ms: int | None = None) -> Event:
    if not isinstance(data, dict):
        raise InvalidEvent("schema", "an event must be a JSON object")
    if "lead_id" not in data and "anonymous_id" not in data:
        raise InvalidEvent("missing_id", "an event needs lead_id or anonymous_id")
    if not _fast_valid(data):
        try:
            _validate_envelope(data)
            _validate_source[data["source"]](data)
        except fastjsonschema.JsonSchemaValueException as exc:
            raise _reason(exc) from None
        _integral(data)  # the fast check accepts ints only where integers are due
    return _event(data, now_ms, skew_ms, check_finite, max_age_ms, arrived_ms)


#: builds the Event tuple in C: the NamedTuple's own __new__ is a Python function (~0.2 µs)
_new = tuple.__new__


def _event(data: dict[str, Any], now_ms: int, skew_ms: int, check_finite: bool,
           max_age_ms: int | None, arrived_ms: int | None) -> Event:
    """The validated `data`'s Event, once its times are judged (future, too old)."""
    occurred_at = data["occurred_at"]
    if type(occurred_at) is not int:
        occurred_at = parse_time(occurred_at)
    if occurred_at > now_ms + skew_ms:
        raise InvalidEvent(
            "future_timestamp", f"occurred_at is more than {skew_ms} ms ahead of the clock", "occurred_at"
        )
    # Judged against the arrival, not the clock: a replay (rescore) or a lagging consumer must
    # decide as the first reading did. Why at all: a "demo_request" stamped in 1970 would spend
    # the rule's one-time award at ~0 points.
    if max_age_ms is not None and occurred_at < (now_ms if arrived_ms is None else arrived_ms) - max_age_ms:
        raise InvalidEvent(
            "too_old", f"occurred_at is more than {format_ms(max_age_ms)} before the event arrived", "occurred_at"
        )
    get = data.get
    properties = get("properties") or {}
    traits = get("traits") or {}
    if check_finite:
        _check_finite(properties, "properties")
        _check_finite(traits, "traits")
    return _new(Event, (data["event_id"], data["source"], data["type"], occurred_at, get("lead_id"),  # type: ignore[no-any-return]
                        get("anonymous_id"), properties, traits))


def parse(raw: bytes, now_ms: int, skew_ms: int, max_bytes: int = MAX_EVENT_BYTES,
          max_age_ms: int | None = None, arrived_ms: int | None = None) -> Event:
    """Validate one Kafka message value. Raises InvalidEvent with a stable reason code.
    `max_age_ms`: refuse events stamped longer than that before `arrived_ms` (default `now_ms`)."""
    if len(raw) > max_bytes:
        raise InvalidEvent("too_large", f"{len(raw)} bytes is over the {max_bytes}-byte limit")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("invalid_json", str(exc)) from None
    # orjson refuses NaN, Infinity and numbers that overflow a double (1e999 is invalid_json),
    # so parsed values are finite already. What the fast check accepts has an id (lead or
    # anonymous) and is an object: _from_dict's first checks could not refuse it.
    if type(data) is dict and _fast_valid(data):
        return _event(data, now_ms, skew_ms, False, max_age_ms, arrived_ms)
    return _from_dict(data, now_ms, skew_ms, False, max_age_ms, arrived_ms)

