"""CRM outcomes drive the lifecycle (docs/scoring.md §10), decided in lib.lua, against a real
redis-server: moves and their transitions, late and repeated outcomes, unknown leads, the
cool-down, /leads/top, the sales SLA's one sla_overdue per SQL, and each outcome's record."""

from __future__ import annotations

import asyncio
import uuid

import jsonschema
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from leadpulse import handoff, outcome
from leadpulse.dev.embedded import RedisServer
from leadpulse.errors import ModelError
from leadpulse.events import Event, load_schema
from leadpulse.keys import Keys
from leadpulse.model import ScoringModel, load_model, parse_model
from leadpulse.state import DUPLICATE, SCORED, LeadStore

from .support.fixtures import DAY, T0, event

MODEL = """
version: lc-1
categories:
  intent: {half_life: 30d}
  fitcat: {}
rules:
  - {id: demo, category: intent, points: 50, when: {source: web, type: demo_request}}
  - {id: visit, category: intent, points: 30, when: {source: web, type: page_view}}
fit:
  grades: {A: 30, B: 20, C: 10}
  rules:
    - {id: vp, category: fitcat, points: 20, when: {seniority: vp}}
stages:
  - {name: lead, min_score: 0}
  - {name: mql, min_score: 40, handoff: true}
  - {name: sql, min_score: 90, min_grade: C, handoff: true}
hysteresis: 5
"""
HANDOFF = load_schema("handoff.schema.json")
OUTCOME = load_schema("outcome.schema.json")
HOUR = 3_600_000


@pytest.fixture(scope="module")
def model() -> ScoringModel:
    return parse_model(MODEL + "lifecycle: {sla: 2d}\n", "test")


@pytest.fixture
def store(redis: Redis, model: ScoringModel) -> LeadStore:
    return LeadStore(redis, model)


def crm(kind: str, at: int, lead: str = "lead-1", event_id: str | None = None, **props: object) -> Event:
    return event("crm", kind, at, lead=lead, event_id=event_id, **props)


async def to_sql(store: LeadStore, lead: str = "lead-1", at: int = T0) -> None:
    """Promote a lead into sql at `at` (demo + a visit + fit grade C or better)."""
    batch = [event("profile", "identify", at - 2, lead=lead, traits={"seniority": "vp"}),
             event("web", "demo_request", at - 1, lead=lead), event("web", "page_view", at, lead=lead)]
    result = await store.apply([(e, f"w:0:{i}") for i, e in enumerate(batch)])
    assert [t.kind for t in result.transitions][-1] == "promoted"
    view = await store.view(lead, at)
    assert view is not None and view.stage == "sql"


def pos(e: Event, n: int = 0) -> list[tuple[Event, str]]:
    return [(e, f"events.crm:0:{n}")]


# --- the model section ------------------------------------------------------------------

def test_default_model_lifecycle() -> None:
    m = load_model()
    assert m.stage_names[-3:] == ("sal", "opportunity", "customer")
    spec = m.lifecycle.spec()
    assert spec["outcomes"]["sql_accepted"] == ["advanced", 1, 0]
    assert spec["outcomes"]["won"] == ["closed", 3, 0]
    assert spec["outcomes"]["sql_rejected"] == ["recycled", 0, 30 * DAY]
    assert spec["outcomes"]["lost"] == ["recycled", 0, 90 * DAY]
    assert spec["sla"] == 2 * DAY


@pytest.mark.parametrize(("section", "message"), [
    ("lifecycle: {outcomes: {won: {stage: paid}}}", "lifecycle.outcomes.won.stage: unknown lifecycle stage 'paid'"),
    ("lifecycle: {outcomes: {won: {stage: customer, recycle: 1d}}}", "give exactly one of stage, recycle"),
    ("lifecycle: {outcomes: {bought: {ignore: true}}}", "lifecycle.outcomes.bought"),
    ("lifecycle: {stages: [{name: mql}], outcomes: {}}", "lifecycle.stages[0].name: 'mql' is a model stage already"),
    ("lifecycle: {sla: 0}", "lifecycle.sla: must be > 0"),
    ("lifecycle: {colour: red}", "lifecycle.colour"),
])
def test_lifecycle_section_errors_name_the_key(section: str, message: str) -> None:
    with pytest.raises(ModelError) as err:
        parse_model(MODEL + section, "m.yaml")
    assert message in str(err.value)


def test_lifecycle_defaults_without_the_section() -> None:
    spec = parse_model(MODEL, "m").lifecycle.spec()
    assert spec["outcomes"]["sql_rejected"] == ["recycled", 0, 30 * DAY] and spec["sla"] == 0


def test_lifecycle_shorthand_and_ignore() -> None:
    m = parse_model(MODEL + "lifecycle: {outcomes: {won: customer, lost: {ignore: true}}, sla: null}", "m")
    assert m.lifecycle.spec() == {"n": 3, "closed": [False, False, True], "outcomes": {"won": ["closed", 3, 0]}, "sla": 0}


# --- moves --------------------------------------------------------------------------------

async def test_accepted_opportunity_won(store: LeadStore, model: ScoringModel) -> None:
    await to_sql(store)
    accepted = await store.apply(pos(crm("sql_accepted", T0 + HOUR, event_id="c1")))
    (t,) = accepted.transitions
    assert (t.kind, model.stage_names[t.from_stage], model.stage_names[t.to_stage]) == ("advanced", "sql", "sal")
    assert t.outcome == "sql_accepted" and t.event_id == "c1" and t.crossed_at == T0 + HOUR
    record = handoff.build(model, t)
    jsonschema.validate(record, HANDOFF)
    assert record["stage"] == "sal" and record["outcome"] == "sql_accepted" and record["cooldown_until"] is None
    (snap,) = accepted.crm
    rec = outcome.build(model, snap)
    jsonschema.validate(rec, OUTCOME)
    assert (rec["stage"], rec["stage_after"], rec["sql_at"]) == ("sql", "sal", handoff.iso(T0))
    assert rec["mql_at"] == handoff.iso(T0 - 1) and rec["first_seen_at"] == handoff.iso(T0 - 2)
    assert rec["score"] > 90 and rec["fit_grade"] == "B"
    assert rec["arm"] is None  # the model runs no A/B test
    assert outcome.sla_seconds(model, snap) == 3600
    assert not await store.top(10, T0 + HOUR)  # sales holds it: not a lead to work
    view = await store.view("lead-1", T0 + HOUR)
    assert view is not None and view.stage == "sal" and view.explanation.score > 90

    opp = await store.apply(pos(crm("opportunity_created", T0 + 2 * HOUR), 1))
    assert [(t.kind, model.stage_names[t.to_stage]) for t in opp.transitions] == [("advanced", "opportunity")]
    won = await store.apply(pos(crm("won", T0 + 3 * HOUR), 2))
    assert [(t.kind, model.stage_names[t.to_stage]) for t in won.transitions] == [("closed", "customer")]
    assert outcome.build(model, won.crm[0])["last_handoff_id"] == opp.transitions[0].handoff_id
    # a customer: events still score (readable), but nothing promotes or demotes it
    later = await store.apply([(event("web", "demo_request", T0 + 4 * HOUR), "w:0:9")])
    assert later.transitions == []
    view = await store.view("lead-1", T0 + 400 * DAY)
    assert view is not None and view.stage == "customer" and view.explanation.score > 0
    assert await store.sweep(T0 + 400 * DAY) == []


async def test_redelivered_and_late_outcomes_change_nothing_twice(store: LeadStore, model: ScoringModel) -> None:
    await to_sql(store)
    won = crm("won", T0 + 5 * HOUR, event_id="won-1")
    first = await store.apply(pos(won, 7))
    assert [t.kind for t in first.transitions] == ["closed"]
    # the same message again (a crash before the commit): the same transition and record, to publish
    replay = await store.apply(pos(won, 7))
    assert replay.outcomes == [DUPLICATE]
    assert [t.handoff_id for t in replay.transitions] == [first.transitions[0].handoff_id]
    assert [o.outcome_id for o in replay.crm] == [first.crm[0].outcome_id]
    # the same event from elsewhere: a duplicate, nothing at all
    again = await store.apply([(won, "events.crm:1:3")])
    assert again.outcomes == [DUPLICATE] and again.transitions == [] and again.crm == []
    # an outcome older than the latest applied arrives late: recorded, moves nothing
    late = await store.apply(pos(crm("sql_rejected", T0 + 2 * HOUR, reason="no budget"), 8))
    assert late.outcomes == [SCORED] and late.transitions == []
    (snap,) = late.crm
    assert model.stage_names[snap.stage_after] == "customer" and snap.reason == "no budget"
    # a later accepted does not move a customer back
    back = await store.apply(pos(crm("sql_accepted", T0 + 9 * HOUR), 9))
    assert back.transitions == []
    view = await store.view("lead-1", T0 + 9 * HOUR)
    assert view is not None and view.stage == "customer"


async def test_rejected_is_recycled_with_a_cooldown(store: LeadStore, model: ScoringModel) -> None:
    await to_sql(store)
    at = T0 + HOUR
    rejected = await store.apply(pos(crm("sql_rejected", at, reason="wrong persona")))
    (t,) = rejected.transitions
    assert (t.kind, model.stage_names[t.from_stage], model.stage_names[t.to_stage]) == ("recycled", "sql", "lead")
    assert t.reason == "wrong persona" and t.cooldown_until == at + 30 * DAY
    record = handoff.build(model, t)
    jsonschema.validate(record, HANDOFF)
    assert record["cooldown_until"] == handoff.iso(at + 30 * DAY) and record["reason"] == "wrong persona"
    assert await store.top(10, at) == []
    view = await store.view("lead-1", at)
    assert view is not None and view.stage == "lead" and view.cooldown_until == at + 30 * DAY
    assert view.explanation.score > 90  # the score stays readable
    # during the cool-down nothing promotes it, however hot
    during = await store.apply([(event("web", "demo_request", at + DAY), "w:0:5")])
    assert during.transitions == []
    late = await store.view("lead-1", at + 31 * DAY)
    assert late is not None and late.cooldown_until is None  # over at that instant
    # the first event after it decides again
    after = await store.apply([(event("web", "page_view", at + 31 * DAY), "w:0:6"),
                               (event("web", "demo_request", at + 31 * DAY + 1), "w:0:7")])
    assert [t.kind for t in after.transitions][:1] == ["promoted"]
    assert [(o.outcome) for o in rejected.crm] == ["sql_rejected"]


async def test_outcome_for_an_unknown_lead_is_kept(store: LeadStore, model: ScoringModel) -> None:
    result = await store.apply(pos(crm("sql_accepted", T0, lead="never-seen", event_id="x1")))
    assert result.outcomes == [SCORED]
    assert [(t.kind, model.stage_names[t.to_stage]) for t in result.transitions] == [("advanced", "sal")]
    rec = outcome.build(model, result.crm[0])
    jsonschema.validate(rec, OUTCOME)
    assert (rec["stage"], rec["stage_after"], rec["score"], rec["sql_at"]) == ("lead", "sal", 0, None)
    assert outcome.sla_seconds(model, result.crm[0]) is None
    view = await store.view("never-seen", T0)
    assert view is not None and view.stage == "sal"


async def test_sla_overdue_once_per_sql(store: LeadStore, model: ScoringModel) -> None:
    await to_sql(store)
    await to_sql(store, "lead-2")
    assert await store.sweep(T0 + 2 * DAY - 1) == []
    overdue = await store.sweep(T0 + 2 * DAY + 10)
    assert sorted((t.lead_id, t.kind, t.crossed_at) for t in overdue) == [
        ("lead-1", "sla_overdue", T0 + 2 * DAY), ("lead-2", "sla_overdue", T0 + 2 * DAY)]
    record = handoff.build(model, overdue[0])
    jsonschema.validate(record, HANDOFF)
    assert record["stage"] == record["previous_stage"] == "sql" and record["triggered_by_event_id"] is None
    # not acknowledged yet: the next pass hands back the same ones (the outbox)
    assert [t.handoff_id for t in await store.sweep(T0 + 2 * DAY + 20)] == [t.handoff_id for t in overdue]
    await store.ack(overdue)
    assert await store.sweep(T0 + 3 * DAY) == []
    # the answer still counts: late, measured
    accepted = await store.apply(pos(crm("sql_accepted", T0 + 3 * DAY)))
    assert outcome.sla_seconds(model, accepted.crm[0]) == 3 * DAY / 1000
    # an answered SQL is never overdue; lead-2 is recycled, promoted again later: a new SLA
    await store.apply(pos(crm("sql_rejected", T0 + 3 * DAY, lead="lead-2"), 1))
    await store.apply([(event("web", "demo_request", T0 + 40 * DAY, lead="lead-2"), "w:1:1"),
                       (event("web", "page_view", T0 + 40 * DAY + 1, lead="lead-2"), "w:1:2")])
    view = await store.view("lead-2", T0 + 40 * DAY + 1)
    assert view is not None and view.stage == "sql"
    again = await store.sweep(T0 + 43 * DAY)
    assert [(t.lead_id, t.kind, t.crossed_at) for t in again] == [("lead-2", "sla_overdue", T0 + 42 * DAY)]


async def test_sla_overdue_decided_by_a_later_event_too(store: LeadStore) -> None:
    """The sweep did not run in time: the lead's next event reports the deadline at its instant,
    as a decay demotion would be (catch_up)."""
    await to_sql(store)
    result = await store.apply([(event("web", "page_view", T0 + 3 * DAY), "w:0:3")])
    assert [(t.kind, t.crossed_at) for t in result.transitions][:1] == [("sla_overdue", T0 + 2 * DAY)]
    assert await store.sweep(T0 + 3 * DAY + 1) == []


def test_handoff_and_outcome_records_serialise(model: ScoringModel) -> None:
    assert orjson.loads(orjson.dumps(OUTCOME))["properties"]["stage_after"]


def test_diff_says_what_changed_in_the_lifecycle() -> None:
    from leadpulse.modeldiff import changes

    old = parse_model(MODEL + "lifecycle: {sla: 2d}\n", "old")
    new = parse_model(MODEL + "lifecycle: {sla: 1d, outcomes: {won: customer, lost: {recycle: 7d}}}\n", "new")
    assert [str(c) for c in changes(old, new)] == [
        "outcome sql_accepted → sal -> moves nothing",
        "outcome sql_rejected recycled, cool-down 30d -> moves nothing",
        "outcome opportunity_created → opportunity -> moves nothing",
        "outcome lost recycled, cool-down 90d -> recycled, cool-down 1w",
        "sales SLA 2d -> 1d",
    ]


async def test_the_lifecycle_fields_of_the_packed_state(redis: Redis, store: LeadStore) -> None:
    """layout.py names what lib.lua writes: each lifecycle field read by name, offsets from the base."""
    from leadpulse import layout

    await to_sql(store)  # first event T0 - 2, first points (the base) and mql at T0 - 1, sql at T0
    fresh = layout.unpack(await redis.get(store.keys.lead("lead-1").state))
    assert fresh is not None and fresh.base == T0 - 1
    assert (fresh.first_seen_at, fresh.promoted_at, fresh.last_handoff) == (-1, [False, 0, 1], [2, 1, 1])  # promoted
    assert fresh.lifecycle is None  # empty fields at the end are not written
    await store.apply(pos(crm("sql_rejected", T0 + HOUR, reason="later")))
    state = layout.unpack(await redis.get(store.keys.lead("lead-1").state))
    assert state is not None
    assert (state.lifecycle, state.cooldown_until, state.last_recycle_at) == (None, HOUR + 1 + 30 * DAY, HOUR + 1)
    assert state.last_handoff == [3, 5, HOUR + 1] and state.advanced_at is None  # recycled
    await store.apply(pos(crm("sql_accepted", T0 + 2 * HOUR), 1))
    state = layout.unpack(await redis.get(store.keys.lead("lead-1").state))
    assert state is not None and (state.lifecycle, state.advanced_at) == (1, [2 * HOUR + 1, False, False])


def test_an_sla_reminder_reads_as_one_in_slack(model: ScoringModel) -> None:
    from leadpulse.alerts.destinations import slack_message

    record = {"handoff_id": "h", "kind": "sla_overdue", "lead_id": "lead-1", "stage": "sql", "previous_stage": "sql",
              "score": 120.0, "threshold": 90, "fit_grade": "B", "top_signals": [], "crossed_at": "2026-12-02T10:00:00.000Z",
              "model_version": "lc-1", "breakdown": {}}
    message = slack_message(record)
    assert "unanswered SQL, past the sales SLA" in message["text"] and "left" not in message["text"]


def test_outcome_records_survive_a_batch_split_to_find_a_poison_record(model: ScoringModel) -> None:
    """A unit test of the pipeline (as tests/test_isolation.py): when a refused batch is applied
    in parts, the outcome records of the parts are still published, once, on leads.outcomes."""
    from leadpulse.explanation import Explanation
    from leadpulse.state import BatchResult, OutcomeSnapshot

    from .test_isolation import FakeProducer, FakeRecord, FakeStore, processor

    class Store(FakeStore):
        async def apply(self, batch: list[tuple[Event, str]], now: int | None = None) -> BatchResult:
            result = await super().apply(batch, now)
            why = Explanation(120.0, {"intent": 100.0, "fitcat": 20.0}, 20.0, "B", ())
            result.crm = [OutcomeSnapshot(e.lead_id or "", e.event_id, e.type, None, e.occurred_at, 2, 3, why,
                                          (None, e.occurred_at - 5, e.occurred_at - 1), None, None, None)
                          for e, _ in batch if e.source == "crm"]
            return result

    now = T0
    rows = [("a", "crm", "sql_accepted"), ("poison", "email", "click"), ("b", "crm", "won")]
    records = [FakeRecord("events.x", 0, i, lead.encode(), orjson.dumps({
        "event_id": f"e{i}", "lead_id": lead, "source": source, "type": kind, "occurred_at": now - 1000,
        **({"properties": {"url": "https://x.io"}} if source == "email" else {})}), timestamp=now)
        for i, (lead, source, kind) in enumerate(rows)]
    store, producer = Store(model, {"poison"}), FakeProducer()
    proc = processor(store, producer)  # type: ignore[arg-type]

    async def go() -> None:
        batch = proc.prepare(records)
        await proc.apply(batch)
        await proc.publish(batch)
        await proc.publish(batch)  # a retry publishes nothing twice

    asyncio.run(go())
    sent = [orjson.loads(value) for topic, value, _, _ in producer.sent if topic == "leads.outcomes"]
    assert [(o["lead_id"], o["outcome"], o["stage"], o["stage_after"]) for o in sent] == [
        ("a", "sql_accepted", "sql", "sal"), ("b", "won", "sql", "sal")]


OUTCOME_TYPES = ("sql_accepted", "sql_rejected", "opportunity_created", "won", "lost")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(st.tuples(st.sampled_from(OUTCOME_TYPES), st.integers(1, 4)), min_size=1, max_size=7),
       data=st.data())
def test_any_arrival_order_of_a_leads_outcomes_ends_where_their_time_order_does(
        redis_server: RedisServer, model: ScoringModel, items: list[tuple[str, int]], data: st.DataObject) -> None:
    """An SQL's outcomes (ties included) applied in time order and in any other order: the same
    stage, cool-down and score at the end."""
    events = [crm(kind, T0 + k * HOUR, event_id=f"o{i}") for i, (kind, k) in enumerate(items)]
    in_time = sorted(range(len(events)), key=lambda i: (events[i].occurred_at, i))
    shuffled = data.draw(st.permutations(range(len(events))))

    async def run(order: list[int]) -> tuple[str, int | None, float]:
        client = Redis.from_url(redis_server.url)
        try:
            store = LeadStore(client, model, Keys(f"p{uuid.uuid4().hex[:8]}"))
            await to_sql(store)
            for n, i in enumerate(order):
                await store.apply([(events[i], f"events.crm:0:{n}")])
            view = await store.view("lead-1", T0 + DAY)
            assert view is not None
            return view.stage, view.cooldown_until, view.explanation.score
        finally:
            await client.aclose()

    assert asyncio.run(run(shuffled)) == asyncio.run(run(in_time))
