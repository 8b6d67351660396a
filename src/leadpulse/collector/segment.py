"""Segment Tracking API messages → LeadPulse events. Pure functions, no I/O.

The collector (app.py) hands each message of a request to `map_message` and produces what
comes back. Every event returned has passed `events.from_dict`, the same check the worker runs,
so the collector never emits an event the worker would dead-letter for its content.

A message that does not become an event raises `Unmappable` with a stable `reason`:
- `Ignored` (a subclass) is the expected case: a `track` event name that is not in the event map,
  a `screen` call, an `identify`/`group` before the visitor has a userId. Real sites send plenty
  of these; they are answered with 200 and listed in the response, never an error.
- plain `Unmappable` is a malformed message (no id, bad timestamp, a page without a URL…).
  In a batch it is skipped and listed with its reason; the rest of the batch is still accepted,
  because rejecting the whole batch would make the client drop its good messages too (a 400 is
  not retried). A single-event call (`/v1/t`, …) answers 400 with the reason.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import orjson

from .. import events as contract
from ..errors import InvalidEvent

#: the Segment call types; `screen` (mobile apps) has no LeadPulse meaning and is ignored
SEGMENT_TYPES = ("track", "page", "identify", "group", "alias", "screen")
MAX_KEYS = 64  # the schema's maxProperties for properties and traits
MAX_EVENT_ID = 128
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_DEFS = contract.load_schema("event.schema.json")["$defs"]
#: the event types each source accepts (the contract's)
EVENT_TYPES = contract.EVENT_TYPES

#: Segment track event names → (source, type). Names follow Segment's semantic specs where one
#: exists (the Email spec: "Email Opened", "Email Link Clicked", "Unsubscribed"…). Overridable.
DEFAULT_TRACK_EVENTS: dict[str, str] = {
    "Demo Requested": "web/demo_request",
    "Form Submitted": "web/form_submit",
    "Content Downloaded": "web/content_download",
    "Email Delivered": "email/delivered",
    "Email Opened": "email/open",
    "Email Link Clicked": "email/click",
    "Email Replied": "email/reply",
    "Email Bounced": "email/bounce",
    "Unsubscribed": "email/unsubscribe",
    "Email Marked as Spam": "email/spam_report",
    "Webinar Registered": "webinar/registered",
    "Webinar Attended": "webinar/attended",
    "Webinar Missed": "webinar/no_show",
    "Webinar Question Asked": "webinar/question_asked",
    "Opportunity Created": "crm/opportunity_created",
    "Deal Won": "crm/won",
    "Deal Lost": "crm/lost",
}

# Personal traits no scoring rule nor handoff needs: they are not forwarded (data minimisation).
# The person's name is, as `name` (from name, or firstName + lastName): a rep acts on a name, and
# the worker keeps it only when LEADPULSE_HANDOFF_WHO names it (who.py).
_PERSONAL = frozenset({
    "firstName", "lastName", "first_name", "last_name", "name", "phone", "avatar", "birthday",
    "age", "gender", "username", "address", "id", "description", "createdAt", "created_at",
})
#: the contract's bounds on traits, so that a mapped trait is never what refuses an event
_TRAIT_SCHEMA = _DEFS["envelope"]["properties"]["traits"]["properties"]
_CUSTOM_TEXT = _DEFS["custom_trait"]["maxLength"]
# Derived by the worker from `email` alone: a sent one is never forwarded.
_DERIVED = frozenset({"email_domain", "emailDomain"})
_TEXT_LIMITS = {"name": 256, "email": 320, "job_title": 256, "seniority": 64, "department": 128, "company": 256,
                "company_domain": 256, "industry": 128, "country": 64, "timeline": 64}


class Unmappable(InvalidEvent):
    """A Segment message that does not become a LeadPulse event; `reason` is a stable code."""

    ignored = False


class Ignored(Unmappable):
    """Not an error: a message with no scoring meaning (an unmapped track event, a screen…)."""

    ignored = True


def normalise_name(name: str) -> str:
    """"Demo Requested", "demo_requested" and "demo-requested " are one event name."""
    return " ".join(re.split(r"[\s_\-]+", name.strip())).casefold()


def parse_target(value: Any) -> tuple[str, str] | None:
    """An event-map value: "source/type", {"source": …, "type": …}, or None to drop a default."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        source, type_ = value.get("source"), value.get("type")
    elif isinstance(value, str) and value.count("/") == 1:
        source, type_ = (part.strip() for part in value.split("/"))
    else:
        raise ValueError(f"{value!r} is not source/type (e.g. web/demo_request)")
    if source not in EVENT_TYPES or source == "profile":
        raise ValueError(f"{value!r}: source must be one of web, email, webinar, crm")
    if type_ not in EVENT_TYPES[source]:
        raise ValueError(f"{value!r}: type must be one of {', '.join(EVENT_TYPES[source])}")
    return source, type_


def track_map(overrides: Mapping[str, Any] | None = None) -> dict[str, tuple[str, str]]:
    """The default event map with `overrides` applied (a None value removes a default)."""
    merged: dict[str, Any] = {normalise_name(k): v for k, v in DEFAULT_TRACK_EVENTS.items()}
    for name, value in (overrides or {}).items():
        merged[normalise_name(name)] = value
    out: dict[str, tuple[str, str]] = {}
    for name, value in merged.items():
        target = parse_target(value)
        if target is not None:
            out[name] = target
    return out


@dataclass(frozen=True)
class Context:
    """What a message is mapped against: the clock at receipt and the configuration."""

    received_ms: int
    skew_ms: int = 5 * 60_000
    track_events: Mapping[str, tuple[str, str]] = field(default_factory=track_map)
    sent_at_ms: int | None = None  # the request's sentAt, for clock-skew correction
    max_event_bytes: int = contract.MAX_EVENT_BYTES
    max_age_ms: int | None = None  # the model's max_event_age: refuse what the worker would refuse


class Mapped(NamedTuple):
    source: str
    key: bytes
    event: dict[str, Any]
    value: bytes  # the event as produced: JSON, validated


# --- small coercions -----------------------------------------------------------------------


def _id(msg: Mapping[str, Any], name: str) -> str | None:
    value = msg.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise Unmappable("bad_id", f"{name} must be a string or a number", name)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Unmappable("bad_id", f"{name} must be finite", name)
        value = int(value) if value.is_integer() else value
    text = str(value).strip()
    if len(text) > 256:
        raise Unmappable("bad_id", f"{name} is longer than 256 characters", name)
    return text or None


def parse_time(value: Any, name: str) -> int | None:
    """A Segment ISO 8601 timestamp in epoch ms; no offset means UTC (as Segment reads it)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise Unmappable("bad_timestamp", f"{name} must be an ISO 8601 string", name)
    if isinstance(value, int):
        ms = value
    else:
        try:
            stamp = datetime.fromisoformat(value.strip())
        except ValueError:
            raise Unmappable("bad_timestamp", f"{name} {value[:64]!r} is not an ISO 8601 date-time", name) from None
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        ms = (stamp - EPOCH) // timedelta(milliseconds=1)
    if ms < 0:
        raise Unmappable("bad_timestamp", f"{name} is before 1970", name)
    return ms


def _text(value: Any, limit: int) -> str | None:
    # Over-long text is cut, not rejected: a 5 KB tracking URL still says "pricing page".
    if isinstance(value, str) and value.strip():
        return value.strip()[:limit]
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value.replace(",", "").strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _count(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number >= 0 and number.is_integer() else None


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None and v != ""), None)


def _domain(website: Any) -> str | None:
    if not isinstance(website, str) or not website.strip():
        return None
    text = website.strip()
    host = urlsplit(text if "//" in text else "//" + text).hostname
    return host.removeprefix("www.") if host else None


def _extras(source: Mapping[str, Any], skip: set[str] | frozenset[str], out: dict[str, Any]) -> None:
    """Copy the remaining scalar values (custom rules may match them) up to the schema's limit."""
    for key, value in source.items():
        if len(out) >= MAX_KEYS:
            return
        if key in skip or key in out or not isinstance(key, str):
            continue
        if isinstance(value, str):
            out[key] = value[:_CUSTOM_TEXT]
        elif isinstance(value, (bool, int)) or (isinstance(value, float) and math.isfinite(value)):
            out[key] = value


def _dict(msg: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = msg.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Unmappable("schema", f"{name} must be an object", name)
    return value


# --- traits ----------------------------------------------------------------------------------


def person_traits(traits: Mapping[str, Any]) -> dict[str, Any]:
    """Segment identify traits (reserved names: title, company{…}, address{…}, website) →
    LeadPulse traits. A value of the wrong type is dropped rather than the whole identify lost."""
    company = traits.get("company")
    company_obj = company if isinstance(company, dict) else {}
    address_value = traits.get("address")
    address: dict[str, Any] = address_value if isinstance(address_value, dict) else {}
    out: dict[str, Any] = {}
    first = _first(traits.get("firstName"), traits.get("first_name"))
    last = _first(traits.get("lastName"), traits.get("last_name"))
    full = " ".join(p.strip() for p in (first, last) if isinstance(p, str) and p.strip()) or None
    candidates = {
        "name": _first(traits.get("name"), full),
        "email": traits.get("email"),
        "job_title": _first(traits.get("job_title"), traits.get("title"), traits.get("jobTitle")),
        "seniority": traits.get("seniority"),
        "department": traits.get("department"),
        "company": company if isinstance(company, str) else company_obj.get("name"),
        "company_domain": _first(traits.get("company_domain"), traits.get("companyDomain"),
                                 _domain(traits.get("website")), _domain(company_obj.get("website"))),
        "industry": _first(traits.get("industry"), company_obj.get("industry")),
        "country": _first(traits.get("country"), address.get("country")),
        "timeline": traits.get("timeline"),
    }
    for name, value in candidates.items():
        text = _text(value, _TEXT_LIMITS[name])
        if text is not None:
            out[name] = text
    _company_size(out, _first(traits.get("employees"), traits.get("employee_count"), company_obj.get("employee_count"),
                              company_obj.get("employees")),
                  _first(traits.get("annual_revenue"), traits.get("annualRevenue"), company_obj.get("annual_revenue")))
    budget = traits.get("budget")
    if isinstance(budget, str):
        out["budget"] = budget[: _TRAIT_SCHEMA["budget"]["maxLength"]]
    elif isinstance(budget, (bool, int)) or (isinstance(budget, float) and math.isfinite(budget)):
        out["budget"] = budget
    consumed = {"email", "job_title", "title", "jobTitle", "seniority", "department", "company",
                "company_domain", "companyDomain", "website", "industry", "country", "timeline",
                "employees", "employee_count", "annual_revenue", "annualRevenue", "budget"}
    _extras(traits, consumed | _PERSONAL | _DERIVED, out)
    return out


def company_traits(traits: Mapping[str, Any]) -> dict[str, Any]:
    """Segment group traits → the company traits of the lead. Only company fields: a group's
    `email` or `name` would otherwise overwrite the person's."""
    out: dict[str, Any] = {}
    for name, value in {
        "company": traits.get("name"),
        "company_domain": _first(traits.get("company_domain"), traits.get("domain"), _domain(traits.get("website"))),
        "industry": traits.get("industry"),
        "country": _first(traits.get("country"),
                          traits["address"].get("country") if isinstance(traits.get("address"), dict) else None),
    }.items():
        text = _text(value, _TEXT_LIMITS[name])
        if text is not None:
            out[name] = text
    _company_size(out, _first(traits.get("employees"), traits.get("employee_count")),
                  _first(traits.get("annual_revenue"), traits.get("annualRevenue")))
    return out


def _company_size(out: dict[str, Any], employees: Any, revenue: Any) -> None:
    """Head count and revenue within the contract's bounds; a value out of them is dropped."""
    count = _count(employees)
    if count is not None and count <= _TRAIT_SCHEMA["employees"]["maximum"]:
        out["employees"] = count
    amount = _number(revenue)
    if amount is not None and 0 <= amount <= _TRAIT_SCHEMA["annual_revenue"]["maximum"]:
        out["annual_revenue"] = amount


# --- properties per source -------------------------------------------------------------------


def _page_context(msg: Mapping[str, Any]) -> dict[str, Any]:
    context = msg.get("context")
    page = context.get("page") if isinstance(context, dict) else None
    return page if isinstance(page, dict) else {}


def _track_properties(source: str, props: Mapping[str, Any], page: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    known: dict[str, Any]
    if source == "web":
        known = {"url": _text(_first(props.get("url"), page.get("url")), 4096),
                 "title": _text(_first(props.get("title"), page.get("title")), 1024),
                 "referrer": _text(_first(props.get("referrer"), page.get("referrer")), 4096),
                 "asset": _text(_first(props.get("asset"), props.get("content_name")), 1024)}
        skip = {"url", "title", "referrer", "asset", "content_name"}
    elif source == "email":
        known = {"url": _text(_first(props.get("url"), props.get("link_url")), 4096),
                 "campaign": _text(_first(props.get("campaign"), props.get("campaign_name")), 256)}
        skip = {"url", "link_url", "campaign", "campaign_name"}
    elif source == "webinar":
        webinar_id = _first(props.get("webinar_id"), props.get("webinarId"))
        known = {"minutes": _number(_first(props.get("minutes"), props.get("duration_minutes"))),
                 "webinar_id": _text(str(webinar_id) if isinstance(webinar_id, (int, str)) else None, 256)}
        skip = {"minutes", "duration_minutes", "webinar_id", "webinarId"}
    else:
        known, skip = {}, set()
    out.update({k: v for k, v in known.items() if v is not None})
    _extras(props, skip, out)
    return out


# --- the mapping ---------------------------------------------------------------------------


def event_id(msg: Mapping[str, Any]) -> str:
    """messageId, so a client's retry is the same event (the worker dedupes by event_id).
    Without one, a hash of the message: a retried message hashes the same."""
    mid = msg.get("messageId")
    if isinstance(mid, (str, int)) and not isinstance(mid, bool) and str(mid).strip():
        text = str(mid).strip()
        if len(text) <= MAX_EVENT_ID:
            return text
        return "seg-" + hashlib.sha256(text.encode()).hexdigest()
    stable = {k: v for k, v in msg.items() if k not in ("sentAt", "receivedAt", "writeKey")}
    return "seg-" + hashlib.sha256(orjson.dumps(stable, option=orjson.OPT_SORT_KEYS)).hexdigest()[:40]


def occurred_at(msg: Mapping[str, Any], ctx: Context) -> int:
    """The event time, corrected for the client's clock as Segment does:
    timestamp + (receivedAt − sentAt). A browser whose clock is ten minutes fast would otherwise
    send only future events, which the worker rejects."""
    stamp = parse_time(_first(msg.get("timestamp"), msg.get("originalTimestamp")), "timestamp")
    if stamp is None:
        return ctx.received_ms
    sent = parse_time(msg.get("sentAt"), "sentAt") if msg.get("sentAt") else ctx.sent_at_ms
    if sent is None:
        return stamp
    corrected = stamp + (ctx.received_ms - sent)
    if corrected < 0:
        raise Unmappable("bad_timestamp", "timestamp is before 1970 after clock correction", "timestamp")
    return corrected


def to_event(msg: Any, ctx: Context) -> dict[str, Any]:
    """One Segment message → one LeadPulse event dict (not yet validated)."""
    if not isinstance(msg, dict):
        raise Unmappable("schema", "a message must be a JSON object")
    kind = msg.get("type")
    if not isinstance(kind, str) or not kind:
        raise Unmappable("missing_field", "a message needs a type", "type")
    if kind not in SEGMENT_TYPES:
        raise Unmappable("unknown_type", f"type {kind[:32]!r} is not a Segment call type", "type")
    if kind == "screen":
        raise Ignored("unsupported_type", "screen calls (mobile apps) are not scored", "type")
    user_id = _id(msg, "userId")
    anon_id = _id(msg, "anonymousId")
    if anon_id == user_id:
        anon_id = None
    event: dict[str, Any] = {"event_id": event_id(msg)}

    if kind == "track":
        name = msg.get("event")
        if not isinstance(name, str) or not name.strip():
            raise Unmappable("missing_field", "a track call needs an event name", "event")
        target = ctx.track_events.get(normalise_name(name))
        if target is None:
            raise Ignored("unmapped_event", f"track event {name[:128]!r} is not in the event map", "event")
        source, type_ = target
        tracked = _track_properties(source, _dict(msg, "properties"), _page_context(msg))
        event.update(source=source, type=type_)
        if tracked:
            event["properties"] = tracked
    elif kind == "page":
        props, page = _dict(msg, "properties"), _page_context(msg)
        url = _text(_first(props.get("url"), page.get("url"), props.get("path"), page.get("path")), 4096)
        if url is None:
            raise Unmappable("missing_field", "a page call needs properties.url, context.page.url or a path", "properties.url")
        properties: dict[str, Any] = {"url": url}
        title = _text(_first(props.get("title"), page.get("title"), msg.get("name")), 1024)
        referrer = _text(_first(props.get("referrer"), page.get("referrer")), 4096)
        if title:
            properties["title"] = title
        if referrer:
            properties["referrer"] = referrer
        for extra in ("name", "category"):  # the page's own name and category, when not the title
            value = _text(msg.get(extra), 256)
            if value and extra not in props and value != title:
                properties[extra] = value
        _extras(props, {"url", "title", "referrer", "path"}, properties)
        event.update(source="web", type="page_view", properties=properties)
    elif kind in ("identify", "group"):
        if user_id is None:
            raise Ignored(f"anonymous_{kind}", f"an {kind} call without userId has no lead to attach traits to",
                          "userId")
        traits = _dict(msg, "traits")
        if kind == "identify" and not traits:
            context = msg.get("context")
            # analytics.js sends the traits of a track/page in context.traits; identify keeps them
            if isinstance(context, dict) and isinstance(context.get("traits"), dict):
                traits = context["traits"]
        mapped = person_traits(traits) if kind == "identify" else company_traits(traits)
        event.update(source="profile", type="identify", traits=mapped)
    else:  # alias
        if user_id is None:
            raise Unmappable("missing_field", "an alias call needs userId", "userId")
        previous = _id(msg, "previousId") or anon_id
        if previous is None:
            raise Unmappable("missing_field", "an alias call needs previousId (or anonymousId)", "previousId")
        if previous == user_id:
            raise Ignored("self_alias", "previousId is the userId: nothing to link", "previousId")
        anon_id = previous
        event.update(source="profile", type="alias")

    if user_id is None and anon_id is None:
        raise Unmappable("missing_id", "a message needs userId or anonymousId")
    # The envelope first, as in the README's examples: easier to read on the topic.
    out: dict[str, Any] = {"event_id": event.pop("event_id")}
    if user_id is not None:
        out["lead_id"] = user_id
    if anon_id is not None:
        out["anonymous_id"] = anon_id
    out.update(source=event.pop("source"), type=event.pop("type"), occurred_at=occurred_at(msg, ctx))
    out.update(event)
    return out


def map_message(msg: Any, ctx: Context) -> Mapped:
    """Map and validate one message against the event contract. Raises Unmappable."""
    event = to_event(msg, ctx)
    try:
        contract.from_dict(event, ctx.received_ms, ctx.skew_ms, ctx.max_age_ms)
    except InvalidEvent as exc:
        raise Unmappable(exc.reason, str(exc.args[0]) if exc.args else exc.reason, exc.field) from None
    value = orjson.dumps(event)
    if len(value) > ctx.max_event_bytes:
        raise Unmappable("too_large", f"the event is {len(value)} bytes, over {ctx.max_event_bytes}")
    key = event.get("lead_id") or event["anonymous_id"]
    return Mapped(event["source"], key.encode(), event, value)
