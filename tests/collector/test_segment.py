"""Segment messages → LeadPulse events: every call type, the edge cases real clients produce,
and the promise that whatever comes out passes the worker's own validation."""

from __future__ import annotations

from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leadpulse.events import load_schema, parse
from leadpulse.collector.segment import (
    Context,
    Ignored,
    Unmappable,
    company_traits,
    map_message,
    person_traits,
    to_event,
    track_map,
)

NOW = 1_790_000_000_000  # 2026-09-21T14:13:20Z
ISO_NOW = "2026-09-21T14:13:20.000Z"
SCHEMA = jsonschema.Draft202012Validator(load_schema("event.schema.json"))


def ctx(**kw: Any) -> Context:
    return Context(received_ms=NOW, **kw)


def track(event: str, **kw: Any) -> dict[str, Any]:
    return {"type": "track", "event": event, "userId": "u1", "messageId": "m-1", "timestamp": ISO_NOW, **kw}


def mapped(msg: dict[str, Any], **kw: Any) -> dict[str, Any]:
    m = map_message(msg, ctx(**kw))
    SCHEMA.validate(m.event)
    assert orjson.loads(m.value) == m.event
    return m.event


def test_track_events_map_to_source_and_type_with_message_id_as_event_id() -> None:
    e = mapped(track("Demo Requested", properties={"plan": "pro", "nested": {"x": 1}},
                     context={"page": {"url": "https://acme.io/demo", "title": "Demo"}}))
    assert e == {"event_id": "m-1", "lead_id": "u1", "source": "web", "type": "demo_request",
                 "occurred_at": NOW, "properties": {"url": "https://acme.io/demo", "title": "Demo", "plan": "pro"}}
    assert mapped(track("Email Link Clicked", properties={"link_url": "https://acme.io/blog", "campaign_name": "nov"})
                  )["properties"] == {"url": "https://acme.io/blog", "campaign": "nov"}
    webinar = mapped(track("Webinar Attended", properties={"duration_minutes": "45", "webinar_id": 7}))
    assert (webinar["source"], webinar["type"], webinar["properties"]) == ("webinar", "attended",
                                                                          {"minutes": 45.0, "webinar_id": "7"})
    assert mapped(track("unsubscribed"))["type"] == "unsubscribe"  # names compare loosely
    assert mapped(track("demo_requested"))["type"] == "demo_request"


def test_an_unmapped_track_event_is_ignored_not_an_error() -> None:
    with pytest.raises(Ignored) as info:
        map_message(track("Button Clicked"), ctx())
    assert info.value.reason == "unmapped_event" and info.value.ignored


def test_the_event_map_can_be_extended_changed_and_trimmed() -> None:
    events = track_map({"Trial Started": "web/form_submit", "Demo Requested": {"source": "crm", "type": "won"},
                        "Email Opened": None})
    c = ctx(track_events=events)
    assert map_message(track("Trial Started"), c).event["type"] == "form_submit"
    assert map_message(track("Demo Requested"), c).event["source"] == "crm"
    with pytest.raises(Ignored):
        map_message(track("Email Opened"), c)
    for bad in ("web/fax", "fax/open", "profile/identify", "web", {"source": "web"}):
        with pytest.raises(ValueError):
            track_map({"X": bad})


def test_page_becomes_a_page_view_with_the_url_from_wherever_the_client_put_it() -> None:
    base = {"type": "page", "anonymousId": "a-1", "messageId": "p-1", "timestamp": ISO_NOW}
    assert mapped({**base, "properties": {"url": "https://acme.io/pricing"}, "name": "Pricing"})["properties"] == {
        "url": "https://acme.io/pricing", "title": "Pricing"}
    e = mapped({**base, "context": {"page": {"url": "https://acme.io/x", "referrer": "https://g.co"}}})
    assert e["properties"] == {"url": "https://acme.io/x", "referrer": "https://g.co"}
    assert e["anonymous_id"] == "a-1" and "lead_id" not in e
    assert mapped({**base, "properties": {"path": "/pricing"}})["properties"]["url"] == "/pricing"
    assert len(mapped({**base, "properties": {"url": "https://acme.io/" + "x" * 9000}})["properties"]["url"]) == 4096
    with pytest.raises(Unmappable) as info:
        map_message({**base, "properties": {}}, ctx())
    assert info.value.reason == "missing_field" and not info.value.ignored


def test_identify_maps_segment_reserved_traits_and_links_the_visitor() -> None:
    e = mapped({"type": "identify", "userId": "u1", "anonymousId": "a-1", "messageId": "i-1", "timestamp": ISO_NOW,
                "traits": {"email": "kim@acme.io", "title": "VP Marketing", "firstName": "Kim", "phone": "+1",
                           "company": {"name": "Acme", "employee_count": 300, "industry": "software"},
                           "website": "https://www.acme.io/about", "address": {"country": "DE", "city": "Berlin"},
                           "annualRevenue": "25,000,000", "plan": "enterprise", "tags": ["a"]}})
    assert (e["source"], e["type"], e["lead_id"], e["anonymous_id"]) == ("profile", "identify", "u1", "a-1")
    assert e["traits"] == {"name": "Kim", "email": "kim@acme.io", "job_title": "VP Marketing", "company": "Acme",
                           "company_domain": "acme.io", "industry": "software", "country": "DE",
                           "employees": 300, "annual_revenue": 25_000_000.0, "plan": "enterprise"}


def test_traits_of_the_wrong_type_are_dropped_not_the_identify() -> None:
    traits = person_traits({"email": 42, "employees": "51-200", "annual_revenue": -5, "seniority": "vp",
                            "budget": {"x": 1}, "job_title": "x" * 1000})
    assert traits == {"seniority": "vp", "job_title": "x" * 256}
    assert person_traits({"employees": "1,200", "company": "Globex"}) == {"employees": 1200, "company": "Globex"}
    assert person_traits({"firstName": " Kim ", "lastName": "Lee", "phone": "+1"}) == {"name": "Kim Lee"}
    assert person_traits({"name": "Kim Lee", "first_name": "K"}) == {"name": "Kim Lee"}


def test_custom_traits_are_mapped_within_the_contracts_bounds_so_the_identify_is_kept() -> None:
    """The contract bounds every trait (schemas/event.schema.json): what the collector maps must
    fit them, or the whole identify would be refused for one odd trait."""
    e = mapped({"type": "identify", "userId": "u1", "messageId": "i-2", "timestamp": ISO_NOW, "traits": {
        "plan": "p" * 5000, "nested": {"a": [[["deep"]]]}, "tags": ["a", "b"], "score": 1e300,
        "employees": 1e300, "annual_revenue": 1e20, "budget": "b" * 1000, "seats": 12}})
    assert e["traits"] == {"plan": "p" * 1024, "score": 1e300, "budget": "b" * 256, "seats": 12}
    parse(orjson.dumps(e), NOW, 300_000)


def test_group_sets_company_traits_only() -> None:
    e = mapped({"type": "group", "userId": "u1", "groupId": "g1", "messageId": "g-1", "timestamp": ISO_NOW,
                "traits": {"name": "Acme", "email": "info@acme.io", "employees": 250, "industry": "saas",
                           "website": "acme.io"}})
    assert e["type"] == "identify" and e["traits"] == {"company": "Acme", "company_domain": "acme.io",
                                                       "industry": "saas", "employees": 250}
    assert company_traits({"annual_revenue": 3e6}) == {"annual_revenue": 3e6}


def test_alias_links_the_previous_id_to_the_user() -> None:
    e = mapped({"type": "alias", "userId": "u1", "previousId": "a-9", "messageId": "al-1", "timestamp": ISO_NOW})
    assert (e["source"], e["type"], e["lead_id"], e["anonymous_id"]) == ("profile", "alias", "u1", "a-9")
    assert mapped({"type": "alias", "userId": "u1", "anonymousId": "a-8"})["anonymous_id"] == "a-8"
    with pytest.raises(Ignored):
        map_message({"type": "alias", "userId": "u1", "previousId": "u1"}, ctx())
    with pytest.raises(Unmappable) as info:
        map_message({"type": "alias", "userId": "u1"}, ctx())
    assert info.value.reason == "missing_field"


@pytest.mark.parametrize("msg, reason, ignored", [
    ({"type": "screen", "userId": "u1", "name": "Home"}, "unsupported_type", True),
    ({"type": "identify", "anonymousId": "a", "traits": {"email": "x@y.z"}}, "anonymous_identify", True),
    ({"type": "group", "anonymousId": "a", "groupId": "g"}, "anonymous_group", True),
    ({"type": "track", "event": "Demo Requested"}, "missing_id", False),
    ({"type": "track", "userId": "u1"}, "missing_field", False),
    ({"type": "launch", "userId": "u1"}, "unknown_type", False),
    ({"userId": "u1"}, "missing_field", False),
    ({"type": "track", "event": "Demo Requested", "userId": {"id": 1}}, "bad_id", False),
    ({"type": "track", "event": "Demo Requested", "userId": "u", "timestamp": "yesterday"}, "bad_timestamp", False),
    ({"type": "track", "event": "Webinar Attended", "userId": "u"}, "missing_field", False),  # minutes required
    ({"type": "track", "event": "Webinar Attended", "userId": "u", "properties": {"minutes": 5000}}, "schema", False),
    ({"type": "page", "userId": "u", "properties": {"url": "/"}, "timestamp": "2027-01-01T00:00:00Z"},
     "future_timestamp", False),
    ({"type": "track", "event": "Demo Requested", "userId": "u" * 300}, "bad_id", False),
    ("not an object", "schema", False),
])
def test_messages_that_cannot_map_say_why(msg: Any, reason: str, ignored: bool) -> None:
    with pytest.raises(Unmappable) as info:
        map_message(msg, ctx())
    assert (info.value.reason, info.value.ignored) == (reason, ignored)


def test_client_clock_skew_is_corrected_with_sent_at() -> None:
    # The client's clock is 10 minutes fast: its timestamp and sentAt are both ahead.
    ahead = "2026-09-21T14:23:20.000Z"
    msg = track("Demo Requested", timestamp="2026-09-21T14:23:19.000Z", sentAt=ahead)
    assert map_message(msg, ctx()).event["occurred_at"] == NOW - 1000
    # The batch's sentAt applies when the message has none; a naive timestamp is UTC.
    msg = track("Demo Requested", timestamp="2026-09-21T14:23:19")
    assert map_message(msg, ctx(sent_at_ms=NOW + 600_000)).event["occurred_at"] == NOW - 1000
    assert map_message(track("Demo Requested", timestamp=None), ctx()).event["occurred_at"] == NOW


def test_without_message_id_the_event_id_is_stable_across_retries() -> None:
    msg = {"type": "track", "event": "Demo Requested", "userId": "u1", "timestamp": ISO_NOW}
    first = map_message({**msg, "sentAt": ISO_NOW}, ctx()).event["event_id"]
    retry = map_message({**msg, "sentAt": "2026-09-21T14:13:25Z"}, ctx()).event["event_id"]
    other = map_message({**msg, "timestamp": "2026-09-21T14:13:21Z"}, ctx()).event["event_id"]
    assert first == retry != other and first.startswith("seg-")
    long_id = map_message({**msg, "messageId": "m" * 500}, ctx()).event["event_id"]
    assert len(long_id) <= 128


def test_the_kafka_key_is_the_user_id_else_the_anonymous_id() -> None:
    assert map_message(track("Demo Requested", anonymousId="a-1"), ctx()).key == b"u1"
    anon = {"type": "page", "anonymousId": "a-1", "properties": {"url": "/"}}
    assert map_message(anon, ctx()).key == b"a-1"
    assert map_message({**anon, "userId": 42}, ctx()).event["lead_id"] == "42"  # numeric ids are stringified


_scalar = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**12), st.floats(allow_nan=False),
                    st.text(max_size=20))
_obj = st.dictionaries(st.sampled_from(["url", "path", "title", "minutes", "email", "employees", "company",
                                        "name", "website", "link_url", "x", "annual_revenue"]),
                       _scalar | st.dictionaries(st.text(max_size=5), _scalar, max_size=3), max_size=6)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({
    "type": st.sampled_from(["track", "page", "identify", "group", "alias", "screen", "bogus"]),
}, optional={
    "event": st.sampled_from(["Demo Requested", "Webinar Attended", "Email Link Clicked", "Nope"]) | _scalar,
    "userId": _scalar, "anonymousId": _scalar, "previousId": _scalar, "messageId": _scalar,
    "timestamp": st.sampled_from([ISO_NOW, "2026-09-21T14:00:00+02:00", "bad", "2099-01-01T00:00:00Z"]) | _scalar,
    "properties": _obj | _scalar, "traits": _obj | _scalar, "context": st.fixed_dictionaries({"page": _obj}),
}))
def test_anything_mapped_passes_the_workers_validation(msg: dict[str, Any]) -> None:
    try:
        m = map_message(msg, ctx())
    except Unmappable as exc:
        assert exc.reason and str(exc)
        return
    SCHEMA.validate(m.event)
    parsed = parse(m.value, NOW, 300_000)  # exactly what the worker does with the message
    assert parsed.event_id == m.event["event_id"]
    assert m.key == (m.event.get("lead_id") or m.event["anonymous_id"]).encode()


def test_to_event_puts_the_envelope_first() -> None:
    e = to_event(track("Demo Requested", anonymousId="a"), ctx())
    assert list(e)[:6] == ["event_id", "lead_id", "anonymous_id", "source", "type", "occurred_at"]
