"""The event contract: valid events parse; every kind of bad input is a typed error with a reason."""

from __future__ import annotations

import json

import jsonschema
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leadpulse import events
from leadpulse.dev.simulate import journeys
from leadpulse.errors import InvalidEvent
from leadpulse.events import FAST_CHECK, from_dict, integer_paths, load_schema, parse
from leadpulse.fastcheck import compile_check

NOW = 1_790_000_000_000
SKEW = 300_000


def raw(**fields: object) -> bytes:
    base: dict[str, object] = {
        "event_id": "e1", "lead_id": "l1", "source": "web", "type": "page_view",
        "occurred_at": "2026-09-21T12:00:00Z", "properties": {"url": "https://x.io/pricing"},
    }
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not ...})


def test_schemas_are_valid_draft_2020_12() -> None:
    for name in ("event.schema.json", "handoff.schema.json"):
        jsonschema.Draft202012Validator.check_schema(load_schema(name))


def test_a_valid_event_parses_with_epoch_or_rfc3339_time() -> None:
    e = parse(raw(), NOW, SKEW)
    assert (e.event_id, e.lead_id, e.source, e.type) == ("e1", "l1", "web", "page_view")
    assert e.occurred_at == parse(raw(occurred_at=e.occurred_at), NOW, SKEW).occurred_at
    assert parse(raw(occurred_at="2026-09-21T14:00:00+02:00"), NOW, SKEW).occurred_at == e.occurred_at


@pytest.mark.parametrize(
    ("payload", "reason", "field"),
    [
        (b"{not json", "invalid_json", None),
        (b'{"a": NaN}', "invalid_json", None),
        (b"[1, 2]", "schema", None),
        (raw(lead_id=...), "missing_id", None),
        (raw(event_id=...), "missing_field", None),
        (raw(event_id=""), "schema", "event_id"),
        (raw(source="fax"), "unknown_source", "source"),
        (raw(type="teleport"), "unknown_type", "type"),
        (raw(properties={"title": "no url"}), "missing_field", "properties"),
        (raw(source="webinar", type="attended", properties={"minutes": "ten"}), "schema", "properties.minutes"),
        (raw(source="profile", type="identify", properties=...), "missing_field", None),
        (raw(occurred_at="yesterday"), "schema", "occurred_at"),
        (raw(occurred_at="2026-09-21T12:00:00"), "schema", "occurred_at"),
        (raw(occurred_at=-1), "schema", "occurred_at"),
        (raw(occurred_at=-0.5), "schema", "occurred_at"),
        (raw(occurred_at=True), "schema", "occurred_at"),
        (raw(occurred_at=1e300), "schema", "occurred_at"),
        (raw(source="profile", type="identify", traits={"email_domain": [[["x"]]]}), "schema", "traits.email_domain[0]"),
        (raw(source="profile", type="identify", traits={"team": {"name": "x"}}), "schema", "traits.team"),
        (raw(source="profile", type="identify", traits={"note": "x" * 1025}), "schema", "traits.note"),
        (raw(source="profile", type="identify", traits={"tags": ["a"] * 33}), "schema", "traits.tags"),
        (raw(source="profile", type="identify", traits={"employees": 1e300}), "schema", "traits.employees"),
        (raw(source="profile", type="identify", traits={"employees": 2.5}), "schema", "traits.employees"),
        (raw(occurred_at="1969-12-31T23:59:59Z"), "bad_timestamp", "occurred_at"),
        (raw(occurred_at=NOW + SKEW + 1), "future_timestamp", "occurred_at"),
        (raw(lead_id="x" * 10_000), "schema", "lead_id"),
        (raw(lead_id=7), "schema", "lead_id"),
        (b'{"event_id": "e1", "lead_id": "l", "source": "web", "type": "page_view", "occurred_at": 1,'
         b' "properties": {"url": "u", "n": 1e999}}', "invalid_json", None),
        (raw(properties={"url": "u", **{f"k{i}": i for i in range(100)}}), "schema", "properties"),
        (b"{" * 5000, "invalid_json", None),
        (b" " * 70_000, "too_large", None),
    ],
)
def test_bad_input_is_a_typed_error_naming_the_reason(payload: bytes, reason: str, field: str | None) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse(payload, NOW, SKEW)
    assert info.value.reason == reason
    assert info.value.field == field
    assert str(info.value).startswith(reason)


def test_numeric_times_may_be_floats_and_keep_whole_milliseconds() -> None:
    """What `time.time() * 1000` gives a tracker: a float, integral or not."""
    assert parse(raw(occurred_at=1.7e12), NOW, SKEW).occurred_at == 1_700_000_000_000
    at = parse(raw(occurred_at=1_700_000_000_123.9), NOW, SKEW).occurred_at
    assert at == 1_700_000_000_123 and type(at) is int
    assert parse(raw(occurred_at=0.0), NOW, SKEW).occurred_at == 0


def test_integral_floats_where_integers_are_due_arrive_as_ints() -> None:
    event = parse(raw(source="profile", type="identify", properties=..., traits={"employees": 300.0}), NOW, SKEW)
    assert event.traits["employees"] == 300 and type(event.traits["employees"]) is int


def test_every_integer_of_the_contract_is_bounded_and_found_by_the_normaliser() -> None:
    """An integral float becomes an int (events.integer_paths): it must stay a small one."""
    schema = load_schema("event.schema.json")
    found: list[dict[str, object]] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            kinds = node.get("type")
            if kinds == "integer" or (isinstance(kinds, list) and "integer" in kinds):
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    assert found and len(found) == len(integer_paths(schema))
    for node in found:
        assert isinstance(node.get("minimum"), int) and isinstance(node.get("maximum"), int)
        assert -(2**53) <= node["minimum"] <= node["maximum"] <= 2**53


def test_custom_traits_are_scalars_or_flat_lists_and_kept_ones_serialise() -> None:
    traits = {"plan": "pro", "seats": 12.5, "beta": True, "gone": None, "tags": ["a", 1, False, None]}
    event = parse(raw(source="profile", type="identify", properties=..., traits=traits), NOW, SKEW)
    assert event.traits == traits
    orjson.dumps(event.traits)  # what state.py stores for fit rules must serialise, always


def test_events_older_than_the_horizon_are_too_old_measured_from_their_arrival() -> None:
    day = 86_400_000
    assert parse(raw(occurred_at=NOW - 30 * day), NOW, SKEW, max_age_ms=30 * day).occurred_at == NOW - 30 * day
    for stamp in (NOW - 30 * day - 1, 0, "1970-01-01T00:00:00Z"):
        with pytest.raises(InvalidEvent) as info:
            parse(raw(occurred_at=stamp), NOW, SKEW, max_age_ms=30 * day)
        assert (info.value.reason, info.value.field) == ("too_old", "occurred_at")
        assert "30d before the event arrived" in str(info.value)
    # A record replayed 100 days after it arrived is judged by its arrival, not by the clock.
    assert parse(raw(occurred_at=NOW - 10 * day), NOW + 100 * day, SKEW, max_age_ms=30 * day, arrived_ms=NOW)
    with pytest.raises(InvalidEvent, match="too_old"):
        from_dict(orjson.loads(raw(occurred_at=NOW - 31 * day)), NOW, SKEW, 30 * day)
    assert parse(raw(occurred_at=0), NOW, SKEW).occurred_at == 0  # no horizon given: none applies


def test_awkward_but_valid_ids_are_accepted() -> None:
    for lead in ("{tag}", "a:b:c", "with space", "ünïcødé-😀", "x" * 256):
        assert parse(raw(lead_id=lead), NOW, SKEW).lead_id == lead
    # Duplicate keys: JSON says the last one wins, and so do we.
    dup = b'{"event_id": "e1", "lead_id": "first", "lead_id": "second", "source": "email", "type": "open", "occurred_at": 5}'
    assert parse(dup, NOW, SKEW).lead_id == "second"


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "event_id": st.text(max_size=3) | st.integers(),
        "lead_id": st.text(max_size=3) | st.none(),
        "anonymous_id": st.text(min_size=1, max_size=3),
        "source": st.sampled_from(["web", "email", "webinar", "profile", "crm", "fax"]),
        "type": st.sampled_from(["page_view", "open", "attended", "identify", "alias", "won", "x"]),
        "occurred_at": st.integers(-5, 2 * NOW) | st.floats(-5, 2 * NOW) | st.floats(allow_nan=False, allow_infinity=False)
        | st.sampled_from(["2026-09-21T12:00:00Z", "2026-09-21", "now", 1.7e12, 1e300, True]),
        "properties": st.dictionaries(st.sampled_from(["url", "minutes", "title", "other"]), JSONISH, max_size=3),
        "traits": st.dictionaries(st.sampled_from(["email", "employees", "industry", "budget", "custom"]),
                                  JSONISH | st.integers(-(2**60), 2**60).map(float) | st.text(min_size=250, max_size=1100)
                                  | st.lists(st.text(max_size=300), max_size=40), max_size=3),
    },
)


@settings(max_examples=400, deadline=None)
@given(FIELDS)
def test_fast_validation_agrees_with_the_reference_validator(data: dict[str, object]) -> None:
    """Whatever we accept, the JSON Schema 2020-12 reference accepts, and the other way round."""
    reference = jsonschema.Draft202012Validator(load_schema("event.schema.json"))
    expected = reference.is_valid(json.loads(json.dumps(data)))
    if FAST_CHECK.check(data):  # the fast check alone never accepts what the schema refuses
        assert expected
    try:
        from_dict(data, NOW * 10, SKEW)
        accepted = True
    except InvalidEvent as exc:
        accepted = False
        assert exc.reason in {"schema", "missing_id", "missing_field", "unknown_source", "unknown_type",
                              "bad_timestamp", "future_timestamp"}
        if expected:  # only checks beyond the schema may refuse what the schema allows
            assert exc.reason in {"bad_timestamp", "future_timestamp"}
    if accepted:
        assert expected


def test_the_fast_check_is_compiled_for_the_shipped_schema() -> None:
    """An unsupported keyword would switch it off and cost every event ~20 µs: never silently."""
    assert FAST_CHECK.active, FAST_CHECK.reason
    assert FAST_CHECK.reason is None and "def check(v):" in FAST_CHECK.source


def test_typical_events_take_the_fast_path_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated journeys (every source and type, anonymous visits, traits) and RFC 3339 times
    parse without the full validator, which is made to fail the test if it is ever reached."""
    sample = list(journeys(300, seed=3, start_ms=NOW - 86_400_000))
    sample += [{**e, "occurred_at": "2026-09-21T12:00:00.250+02:00"} for e in sample[:200]]
    assert {e["source"] for e in sample} == {"web", "email", "webinar", "profile", "crm"}

    def unreachable(data: object) -> None:
        raise AssertionError(f"took the full validator: {data!r}")

    monkeypatch.setattr(events, "_validate_envelope", unreachable)
    for e in sample:
        assert FAST_CHECK.check(orjson.loads(orjson.dumps(e))), e
        assert parse(orjson.dumps(e), NOW, SKEW).event_id == e["event_id"]


def test_a_keyword_the_generator_does_not_know_switches_it_off_visibly() -> None:
    schema = {**load_schema("event.schema.json"), "propertyNames": {"maxLength": 40}}
    off = compile_check(schema)
    assert not off.active and "propertyNames" in (off.reason or "") and off.source == ""
    assert off.check({"event_id": "e1"}) is False  # accepts nothing: the full validator decides
