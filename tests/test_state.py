"""The scoring engine against a real redis-server: exact decay, dedup, stages, sweeps, merges."""

from __future__ import annotations

import asyncio
import json
import math
from importlib.resources import files
from typing import Any

import jsonschema
import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from leadpulse import erasure, handoff, layout
from leadpulse import events as contract
from leadpulse.bounds import Retention
from leadpulse.dev.embedded import RedisServer
from leadpulse.dev.simulate import journeys
from leadpulse.events import Event
from leadpulse.explanation import LeadView
from leadpulse.keys import Keys
from leadpulse.model import ScoringModel, parse_model
from leadpulse.state import DUPLICATE, SCORED, LeadStore, Transition

from tests.support.fixtures import DAY, T0, event
from tests.support.reference import reference_score

MODEL = """
version: test-1
categories:
  fast: {half_life: 1d}
  slow: {half_life: 30d}
  flat: {}
  fitcat: {}
rules:
  - {id: visit, category: fast, points: 3, when: {source: web, type: page_view}}
  - {id: pricing, category: slow, points: 25, when: {source: web, type: page_view, url: {glob: "*/pricing*"}}}
  - {id: demo, category: slow, points: 50, when: {source: web, type: demo_request}}
  - {id: minutes, category: slow, points: 20, half_life: 2h, when: {source: webinar, type: attended, minutes: {gte: 30}}}
  - {id: unsub, category: flat, points: -40, when: {source: email, type: unsubscribe}}
  - {id: click, category: fast, points: 1.5, when: {source: email, type: click}}
  - {id: opens, category: fast, points: 4, cap: {points: 10, window: 7d}, when: {source: email, type: open}}
  - {id: reg, category: slow, points: 5, once: true, when: {source: webinar, type: registered}}
fit:
  grades: {A: 30, B: 20, C: 10}
  rules:
    - {id: vp, category: fitcat, points: 20, when: {seniority: vp}}
    - {id: icp, category: fitcat, points: 15, when: {employees: {gte: 50}}}
    - {id: gmail, category: fitcat, points: -10, when: {email_domain: gmail.com}}
stages:
  - {name: lead, min_score: 0}
  - {name: mql, min_score: 40, handoff: true}
  - {name: sql, min_score: 90, min_grade: C, handoff: true}
hysteresis: 5
dedup_window: 7d
"""


@pytest.fixture(scope="module")
def tmodel() -> ScoringModel:
    return parse_model(MODEL, "test")


@pytest.fixture
def store(redis: Redis, tmodel: ScoringModel) -> LeadStore:
    return LeadStore(redis, tmodel)


def positions(events: list[Event]) -> list[tuple[Event, str]]:
    return [(e, f"t:0:{i}") for i, e in enumerate(events)]


# --- 1. exact decay on read, any arrival order ---------------------------------------------

KINDS = [
    ("web", "page_view", {"url": "https://x.io/blog"}, [("visit", 3, DAY)]),
    ("web", "page_view", {"url": "https://x.io/pricing"}, [("visit", 3, DAY), ("pricing", 25, 30 * DAY)]),
    ("web", "demo_request", {}, [("demo", 50, 30 * DAY)]),
    ("webinar", "attended", {"minutes": 45}, [("minutes", 20, 2 * 3_600_000)]),
    ("email", "unsubscribe", {}, [("unsub", -40, None)]),
    ("email", "click", {"url": "https://x.io"}, [("click", 1.5, DAY)]),
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    items=st.lists(
        st.tuples(st.integers(0, len(KINDS) - 1), st.integers(0, 400 * DAY)), min_size=1, max_size=40
    ),
    order=st.randoms(use_true_random=False),
    read_after=st.integers(0, 60 * DAY),
)
def test_score_equals_the_plain_sum_for_any_arrival_order(
    redis_server: RedisServer, tmodel: ScoringModel, items: list[tuple[int, int]], order: Any, read_after: int
) -> None:
    events = []
    terms = []
    for n, (kind, offset) in enumerate(items):
        source, type_, props, rules = KINDS[kind]
        events.append(event(source, type_, T0 + offset, lead="p", event_id=f"p{n}", **props))
        terms.extend((p, T0 + offset, h) for _, p, h in rules)
    order.shuffle(events)
    at = T0 + max(o for _, o in items) + read_after

    async def run() -> Any:
        client = Redis.from_url(redis_server.url)
        try:
            await client.delete(*Keys().lead("p"), "lp:due", "lp:top")
            store = LeadStore(client, tmodel)
            for i in range(0, len(events), 7):  # several batches, as the worker would send
                await store.apply(positions(events[i : i + 7]))
            return await store.view("p", at)
        finally:
            await client.aclose()

    view = asyncio.run(run())
    expected = reference_score(terms, at)
    scale = sum(abs(p) for p, _, _ in terms)
    assert abs(view.explanation.score - expected) <= 1e-9 * scale, (view.explanation.score, expected)
    assert math.isclose(sum(c.points for c in view.explanation.contributions), view.explanation.score, rel_tol=1e-12, abs_tol=1e-9)


async def test_landmark_is_renormalised_long_before_exp_overflows(store: LeadStore) -> None:
    # The 2-hour half-life rule over two years: λ·Δt reaches ~6000, far past e^709.
    events = [event("webinar", "attended", T0 + k * 30 * DAY, lead="r", minutes=40) for k in range(25)]
    await store.apply(positions(events))
    at = T0 + 24 * 30 * DAY + 3_600_000
    view = await store.view("r", at)
    expected = reference_score([(20, e.occurred_at, 2 * 3_600_000) for e in events], at)
    assert math.isfinite(view.explanation.score)
    assert view.explanation.score == pytest.approx(expected, rel=1e-9)


# --- 2. idempotence ------------------------------------------------------------------------


async def test_an_event_applied_twice_changes_nothing(store: LeadStore, redis: Redis) -> None:
    e = event("web", "page_view", T0, lead="d", url="https://x.io/pricing")
    first = await store.apply([(e, "t:0:1")])
    keys = Keys().lead("d")
    state = [await redis.dump(k) for k in keys]
    assert state[0] is not None
    again = await store.apply([(e, "t:0:9")])
    same_batch = await store.apply([(e, "t:0:10"), (e, "t:0:11")])
    assert first.outcomes == [SCORED]
    assert again.outcomes == [DUPLICATE]
    assert same_batch.outcomes == [DUPLICATE, DUPLICATE]
    assert [await redis.dump(k) for k in keys] == state


async def test_a_redis_that_lost_its_scripts_and_data_gets_both_back(store: LeadStore, redis: Redis) -> None:
    """NOSCRIPT (Redis restarted or failed over): the scripts are loaded again and the store,
    which counts the reloads itself, gives its rule codes back before its next batch."""
    await store.apply([(event("web", "demo_request", T0, lead="r1"), "t:0:1")])
    codes, table = dict(store.rule_codes), await redis.hgetall(store.keys.rules)
    assert codes and store.scripts.reloads == 0
    await redis.flushdb()
    await redis.script_flush()
    await store.apply([(event("web", "demo_request", T0, lead="r2"), "t:0:2")])
    assert store.scripts.reloads == 1  # this batch found the scripts gone
    await store.apply([(event("web", "page_view", T0, lead="r2", url="https://x.io/pricing"), "t:0:3")])
    assert store.rule_codes == codes and await redis.hgetall(store.keys.rules) == table
    assert (await store.view("r2", T0)).explanation.score == pytest.approx(50 + 3 + 25)
    assert LeadStore(redis, store.model).scripts.reloads == 0  # the count is this store's, not global


async def test_duplicates_within_one_batch_count_once(store: LeadStore) -> None:
    e = event("web", "demo_request", T0, lead="d2")
    result = await store.apply([(e, "t:0:1"), (e, "t:0:2")])
    assert result.outcomes == [SCORED, DUPLICATE]
    assert (await store.view("d2", T0)).explanation.score == pytest.approx(50)


async def test_the_dedup_window_runs_on_arrival_time_and_bounds_memory(store: LeadStore, redis: Redis) -> None:
    # Events from months ago arriving now are still deduplicated: redeliveries are close in
    # arrival time, however old the event.
    old = event("web", "demo_request", T0 - 90 * DAY, lead="w")
    await store.apply([(old, "t:0:1")], now=T0)
    assert (await store.apply([(old, "t:0:2")], now=T0 + 6 * DAY)).outcomes == [DUPLICATE]
    for k in range(20):
        await store.apply([(event("email", "click", T0 + k, lead="w", url="u"), "t:0:3")], now=T0 + k * DAY)
    # Only what arrived within the last 7 days is remembered, and an idle set expires.
    assert await redis.zcard("lp:l{w}:d") == 8
    assert 0 < await redis.pttl("lp:l{w}:d") <= 7 * DAY
    # Past the window the old event counts again: that is the documented bound.
    assert (await store.apply([(old, "t:0:4")], now=T0 + 30 * DAY)).outcomes == [SCORED]


async def test_no_dedup_window_keeps_nothing(redis: Redis) -> None:
    model = parse_model(MODEL.replace("dedup_window: 7d", "dedup_window: 0s"), "t")
    store = LeadStore(redis, model)
    e = event("web", "demo_request", T0, lead="nw")
    (t,) = (await store.apply([(e, "t:0:1"), (e, "t:0:2")])).transitions
    assert t.kind == "promoted"
    assert (await store.apply([(e, "t:0:1")])).outcomes == [SCORED]  # no window: counted again
    assert not await redis.exists(store.keys.lead("nw").dedup, store.keys.lead("nw").replay)


# --- caps --------------------------------------------------------------------------------


async def test_rolling_window_cap_and_once(store: LeadStore) -> None:
    opens = [event("email", "open", T0 + k * 3_600_000, lead="c") for k in range(5)]  # 5 × 4 points
    regs = [event("webinar", "registered", T0 + k, lead="c") for k in range(3)]
    await store.apply(positions(opens + regs))
    view = await store.view("c", T0 + 5 * 3_600_000)
    by_rule = {c.rule_id: c.points for c in view.explanation.contributions}
    assert sum(4 * 2 ** (-(T0 + 5 * 3_600_000 - e.occurred_at) / DAY) for e in opens[:2]) + 2 * 2 ** (
        -(3 * 3_600_000) / DAY
    ) == pytest.approx(by_rule["opens"])  # 4 + 4 + 2 = the cap of 10
    assert by_rule["reg"] == pytest.approx(5 * 2 ** (-(5 * 3_600_000) / (30 * DAY)), rel=1e-6)
    # A week later the window has room again.
    later = event("email", "open", T0 + 8 * DAY, lead="c")
    await store.apply(positions([later]))
    view2 = await store.view("c", T0 + 8 * DAY)
    assert {c.rule_id: c.points for c in view2.explanation.contributions}["opens"] > 4


async def test_once_with_a_renewal_period_is_earned_again_a_period_after_the_last_award(redis: Redis) -> None:
    renewing = parse_model(MODEL.replace("points: 50, when", "points: 50, once: 90d, when"), "renewal")
    assert renewing.rule_index["demo"].renewal_ms == 90 * DAY  # type: ignore[union-attr]
    store = LeadStore(redis, renewing)

    async def demo(day: float, lead: str = "rn") -> float:
        """The points the demo request of `day` earned (read at its own instant, undecayed)."""
        at = T0 + int(day * DAY)
        before = await store.view(lead, at)
        await store.apply(positions([event("web", "demo_request", at, lead=lead)]))
        after = await store.view(lead, at)
        points = lambda view: 0.0 if view is None else {c.rule_id: c.points for c in view.explanation.contributions}.get("demo", 0.0)  # noqa: E731
        return round(points(after) - points(before), 9)

    # 90 days after the last award it is earned in full again; within them, not at all (a
    # request that earned nothing does not push the renewal back).
    assert [await demo(d) for d in (0, 30, 100, 130, 189.999, 190, 250, 281)] == [50, 0, 50, 0, 0, 50, 0, 50]
    view = await store.view("rn", T0 + 281 * DAY)
    awarded = (0, 100, 190, 281)
    assert {c.rule_id: c.points for c in view.explanation.contributions}["demo"] == pytest.approx(
        sum(50 * 2 ** (-(281 - d) / 30) for d in awarded), rel=1e-12)
    # Caps decide at arrival (docs/scoring.md §6): a late request is checked against the awards
    # at or before its own time, so one arriving after a later award can earn again inside it.
    assert [await demo(d, "late") for d in (0, 95, 91)] == [50, 50, 50]
    # The lifetime form never renews.
    lifetime = LeadStore(redis, parse_model(MODEL.replace("points: 50, when", "points: 50, once: true, when"), "life"))
    await lifetime.apply(positions([event("web", "demo_request", T0 + d * DAY, lead="lf") for d in (0, 100, 400)]))
    view = await lifetime.view("lf", T0 + 400 * DAY)
    assert {c.rule_id: c.points for c in view.explanation.contributions}["demo"] == pytest.approx(50 * 2 ** (-400 / 30), rel=1e-12)


# --- 3. promotion once, re-alert after demotion --------------------------------------------


async def test_promotion_is_reported_once_with_its_explanation(store: LeadStore) -> None:
    first = await store.apply(
        positions([event("web", "page_view", T0, lead="h", url="https://x.io/pricing", event_id="a")])
    )
    assert first.transitions == []
    second = await store.apply([(event("web", "demo_request", T0 + 1000, lead="h", event_id="b"), "t:0:2")])
    (t,) = second.transitions
    assert (t.kind, t.from_stage, t.to_stage, t.event_id) == ("promoted", 0, 1, "b")
    assert t.score == pytest.approx(3 * 2 ** (-1000 / DAY) + 25 * 2 ** (-1000 / (30 * DAY)) + 50)
    assert t.threshold == 40
    assert {c.rule_id for c in t.explanation.contributions} == {"demo", "pricing", "visit"}
    more = await store.apply(positions([event("web", "page_view", T0 + 2000, lead="h", url="/pricing/x")]))
    assert more.transitions == []  # already MQL: no second alert


async def test_decay_demotes_then_a_new_crossing_alerts_again(store: LeadStore) -> None:
    result = await store.apply(positions([event("web", "demo_request", T0, lead="z")]))
    (promoted,) = result.transitions
    # 50 points, 30-day half-life, floor 40 - 5 = 35: due at 30d·log2(50/35) ≈ 15.4 days.
    due = T0 + 30 * DAY * math.log2(50 / 35)
    assert await store.sweep(int(due) - 60_000) == []
    (demoted,) = await store.sweep(T0 + 20 * DAY)
    assert (demoted.kind, demoted.from_stage, demoted.to_stage) == ("demoted", 1, 0)
    assert abs(demoted.crossed_at - due) <= 1
    assert demoted.score < 35 <= 50 * 2 ** (-(demoted.crossed_at - 1 - T0) / (30 * DAY))
    # Until acknowledged as published the same decision comes back (same id), never a new one.
    (again,) = await store.sweep(T0 + 21 * DAY)
    assert again.handoff_id == demoted.handoff_id
    await store.ack([demoted])
    assert await store.sweep(T0 + 400 * DAY) == []
    # A fresh burst crosses the threshold again: a new promotion with a new id.
    burst = [event("web", "page_view", T0 + 25 * DAY + k, lead="z", url="/pricing") for k in range(2)]
    (re_promoted,) = (await store.apply(positions(burst))).transitions
    assert re_promoted.kind == "promoted"
    assert len({promoted.handoff_id, demoted.handoff_id, re_promoted.handoff_id}) == 3


async def test_negative_points_demote_immediately(store: LeadStore) -> None:
    await store.apply(positions([event("web", "demo_request", T0, lead="n")]))
    result = await store.apply(positions([event("email", "unsubscribe", T0 + 1, lead="n")]))
    (t,) = result.transitions
    assert (t.kind, t.to_stage) == ("demoted", 0)


async def test_sql_needs_its_minimum_grade(store: LeadStore) -> None:
    hot = [event("web", "demo_request", T0, lead="g"), event("web", "page_view", T0 + 1, lead="g", url="/pricing")]
    hot += [event("webinar", "attended", T0 + 2, lead="g", minutes=50)]
    result = await store.apply(positions(hot))
    assert [t.to_stage for t in result.transitions] == [1]  # 98 points but grade D: MQL only
    identify = event("profile", "identify", T0 + 3, lead="g", traits={"seniority": "VP", "email": "a@acme.io"})
    (t,) = (await store.apply(positions([identify]))).transitions
    assert (t.kind, t.to_stage) == ("promoted", 2)
    view = await store.view("g", T0 + 3)
    assert view.explanation.fit_grade == "B"
    assert view.stage == "sql"


async def test_replayed_message_returns_its_transitions_new_duplicate_does_not(store: LeadStore) -> None:
    e = event("web", "demo_request", T0, lead="rp")
    (t,) = (await store.apply([(e, "events.web:0:41")])).transitions
    replay = await store.apply([(e, "events.web:0:41")])
    assert replay.outcomes == [DUPLICATE]
    assert [x.handoff_id for x in replay.transitions] == [t.handoff_id]
    assert (await store.apply([(e, "events.web:2:7")])).transitions == []
    # The replay log lives apart from the state, only as long as a replay can come.
    assert 0 < await store.redis.pttl(store.keys.lead("rp").replay) <= 7 * DAY


# --- the packed state --------------------------------------------------------------------

PACKED = [
    0.1 + 0.2, 1 / 3, -40, 1.5, 0.1, -0.75, 2.0**53, 2.0**53 + 2, 1_790_000_000_000, 2.0**63, 3.4028234663852886e38,
    20 * math.exp(599.9), 1e308, 5e-324, -1e-300, 16_777_217, 0.0, 25 * 2 ** (-1000 / (30 * DAY)),
]


async def test_packing_keeps_every_double_exactly(redis: Redis) -> None:
    # cmsgpack writes whole numbers as integers and a float32 only where that is exact: what
    # Lua packs, Lua and Python's msgpack read back bit for bit.
    script = """
    local xs = cjson.decode(ARGV[1])
    xs[#xs + 1] = 0.1 + 0.2
    xs[#xs + 1] = 20 * math.exp(599.9)
    local back = cmsgpack.unpack(cmsgpack.pack(xs))
    local out = {}
    for i, x in ipairs(xs) do
      if back[i] ~= x then return redis.error_reply('lost ' .. string.format('%.17g', x)) end
      out[i] = string.format('%.17g', x)
    end
    return {cmsgpack.pack(xs), out}
    """
    packed, printed = await redis.eval(script, 0, json.dumps(PACKED))
    values = msgpack.unpackb(packed)
    assert [float(v) for v in values] == [float(p) for p in printed]
    assert values[: len(PACKED)] == PACKED
    assert values[-2] == 0.1 + 0.2 and values[-1] == pytest.approx(20 * math.exp(599.9), rel=1e-15)
    assert b"\xca\x3f\xc0\x00\x00" in packed  # 1.5 went as a float32: the exact-only shortcut is taken


async def test_the_packed_layout_is_the_one_layout_py_names(redis: Redis, tmodel: ScoringModel) -> None:
    # lib.lua writes the state, layout.py names its fields: every field of a state the scripts
    # wrote, read by name, holds what the events put there.
    store = LeadStore(redis, tmodel, retention=Retention(lead_ttl_ms=400 * DAY))
    now = T0 + 3 * DAY
    staged = [
        event("web", "page_view", T0, lead="lay", url="/blog"),
        event("web", "page_view", T0, lead="lay", url="/blog"),
        *[event("email", "open", T0 + k, lead="lay") for k in range(1, 4)],
        event("webinar", "registered", T0 + 5, lead="lay"),
        event("web", "demo_request", T0 + DAY, lead="lay"),  # mql
        event("email", "unsubscribe", T0 + DAY + 1, lead="lay"),  # lead
        event("web", "page_view", T0 + 2 * DAY, lead="lay", url="/pricing"),  # mql
        event("email", "unsubscribe", T0 + 2 * DAY + 1, lead="lay"),  # lead
        event("web", "demo_request", T0 + 2 * DAY + 2, lead="lay"),  # mql
        event("profile", "identify", T0 + 2 * DAY + 3, lead="lay", traits={"employees": 80, "email": "a@gmail.com"}),
    ]
    transitions = (await store.apply(positions(staged), now=now)).transitions
    await store.apply(positions([event("profile", "identify", T0, lead="idle", traits={"seniority": "vp"})]), now=now)
    state = layout.unpack(await redis.get(store.keys.lead("lay").state))
    code = store.rule_codes
    fast, slow = (math.log(2) / (h * DAY) for h in (1, 30))
    assert state is not None and state.format == layout.FORMAT
    assert (state.base, state.clock, state.landmark) == (T0, 2 * DAY + 3, 0)  # L: the first decayed award
    assert (state.stage, state.seq) == (1, 5) and [t.seq for t in transitions] == [1, 2, 3, 4, 5]
    assert state.base + state.clock + state.due == await redis.zscore(store.keys.due, "lay")
    assert state.oldest_arrival == now // 1000
    assert state.indexes == 3  # in the due index and in the top index
    exact = pytest.approx
    assert state.sums == {  # [S, latest occurrence - B]: S = Σ p·e^{λ(t - L)}
        code["visit"]: [exact(6 + 3 * math.exp(fast * 2 * DAY), rel=1e-15), 2 * DAY],
        code["opens"]: [exact(4 * math.exp(fast) + 4 * math.exp(fast * 2) + 2 * math.exp(fast * 3), rel=1e-15), 3],
        code["reg"]: [exact(5 * math.exp(slow * 5), rel=1e-15), 5],
        code["demo"]: [exact(50 * math.exp(slow * DAY) + 50 * math.exp(slow * (2 * DAY + 2)), rel=1e-15), 2 * DAY + 2],
        code["unsub"]: [-80, 2 * DAY + 1],
        code["pricing"]: [exact(25 * math.exp(slow * 2 * DAY), rel=1e-15), 2 * DAY],
    }
    assert state.fit == {code["icp"]: 15, code["gmail"]: -10}
    assert state.caps == {code["opens"]: [1, 4, 2, 4, 3, 2], code["reg"]: 5}  # awards of a window cap, a `once`
    assert state.traits_expiry is None  # staged: kept for good
    assert state.fit_known == 2  # employees, email_domain of seniority, employees, email_domain
    assert state.idle is None  # no idle decay in this model (tests/test_idle.py)
    idle = layout.unpack(await redis.get(store.keys.lead("idle").state))
    assert idle is not None and idle.stage == 0 and idle.traits_expiry is not None
    assert idle.traits_expiry == now // 1000 + 400 * DAY // 1000 + 400 * DAY // 8000  # ttl + ttl/8 from `now`
    assert (idle.base, idle.clock, idle.landmark, idle.sums, idle.due) == (T0, 0, None, {}, None)
    await erasure.erase(store, "lay")
    assert await redis.get(store.keys.lead("lay").state) == layout.TOMBSTONE
    assert layout.unpack(layout.TOMBSTONE) is None


async def test_a_transition_carries_what_a_read_of_its_state_gives(store: LeadStore, redis: Redis) -> None:
    # The 2-hour half-life rule over months moves the landmark: the transition is explained by
    # the script that decided it, a read of the stored state at crossed_at by read.lua. The same
    # numbers, to the last bit.
    events = [event("webinar", "attended", T0 + k * 20 * DAY, lead="ps", minutes=40) for k in range(8)]
    events += [event("email", "click", T0 + 160 * DAY + k, lead="ps", url="u") for k in range(3)]
    events += [event("web", "demo_request", T0 + 161 * DAY, lead="ps")]
    (t,) = (await store.apply(positions(events))).transitions
    state = layout.unpack(await redis.get(store.keys.lead("ps").state))
    assert state is not None and state.base + state.landmark > T0 + 100 * DAY  # renormalised
    view = await store.view("ps", t.crossed_at)
    assert view is not None and view.explanation == t.explanation
    assert [c.rule_id for c in t.explanation.contributions] == ["demo", "click", "minutes"]
    assert t.explanation.score == t.score >= t.threshold


@pytest.mark.parametrize("which", ["default", "test", "idle"])
async def test_due_times_solved_for_equal_the_searched_ones(redis: Redis, model: ScoringModel, tmodel: ScoringModel,
                                                           which: str) -> None:
    # The default model decays every rule alike: next_due solves for the crossing (lib.lua
    # `crossing`) instead of searching; under idle decay alone it steps over ticks (`idle_due`).
    # Both must give the same millisecond, on real journeys (caps, fit, negative points) at every
    # stage floor and from several clocks.
    idle = files("leadpulse").joinpath("default_model.yaml").read_text().replace(
        "decay: {lose_percent: 15, after: 30d}", "decay: {lose_percent: 15, after: 30d, mode: idle}")
    used = {"default": model, "test": tmodel, "idle": parse_model(idle, "idle")}[which]
    store = LeadStore(redis, used)
    now = T0 + 400 * DAY
    parsed = []
    for e in journeys(150, seed=4, start_ms=T0, prefix="nd"):
        e.setdefault("lead_id", e.pop("anonymous_id", "x").removeprefix("anon-"))
        e.pop("anonymous_id", None)
        parsed.append(contract.parse(orjson.dumps(e), now, used.clock_skew))
    for i in range(0, len(parsed), 500):
        await store.apply([(e, f"t:0:{i + j}") for j, e in enumerate(parsed[i : i + 500])], now)
    keys = [store.keys.lead(lead).state for lead in sorted({e.lead_id for e in parsed if e.lead_id})]
    script = files("leadpulse").joinpath("lua", "lib.lua").read_text() + """
    local out, solved = {}, 0
    for _, key in ipairs(KEYS) do
      local st = load(key)
      local c = st.c
      for s = 1, NSTAGE - 1 do
        for k = 0, 3 do
          st.s, st.c = s, c + k * 86400000
          local a, b = next_due(st), next_due(st, true)
          if a ~= b then out[#out + 1] = key .. ' ' .. s .. ' ' .. k .. ': ' .. tostring(a) .. ' ~= ' .. tostring(b) end
          if a then solved = solved + 1 end
        end
      end
    end
    return {solved, out}
    """
    solved, differing = await redis.eval(script, len(keys), *keys, store.spec)
    assert differing == []
    assert solved > 100


# --- 5. anonymous visitors ------------------------------------------------------------------


async def test_anonymous_activity_merges_exactly_into_the_lead(store: LeadStore, redis: Redis) -> None:
    anon_events = [
        event("web", "page_view", T0 + k * 3_600_000, lead=None, anon="cookie", url="/pricing") for k in range(3)
    ]
    result = await store.apply(positions(anon_events))
    assert result.outcomes == ["anonymous"] * 3
    assert await store.view("m", T0) is None
    link = event("profile", "identify", T0 + 4 * 3_600_000, lead="m", anon="cookie", traits={"seniority": "vp"})
    await store.apply(positions([link]))
    later = event("web", "page_view", T0 + 5 * 3_600_000, lead=None, anon="cookie", url="/blog")
    assert (await store.apply(positions([later]))).outcomes == [SCORED]
    # The same events sent with the lead id from the start give the same score.
    direct = [e._replace(lead_id="m2", anonymous_id=None) for e in [*anon_events, link, later]]
    await store.apply(positions(direct))
    at = T0 + 6 * 3_600_000
    assert (await store.view("m", at)).explanation.score == pytest.approx((await store.view("m2", at)).explanation.score, rel=1e-12)
    assert not await redis.exists("lp:a{cookie}:s")  # the log moved into the lead
    # Linking again (a retried identify) changes nothing.
    await store.apply([(link._replace(event_id="again"), "t:1:1")])
    assert (await store.view("m", at)).explanation.score == pytest.approx((await store.view("m2", at)).explanation.score, rel=1e-12)


# --- 6. reads -------------------------------------------------------------------------------


async def test_read_returns_breakdown_and_contributions_that_sum_to_the_score(store: LeadStore) -> None:
    events = [
        event("web", "page_view", T0, lead="v", url="/pricing"),
        event("email", "unsubscribe", T0 + 1, lead="v"),
        event("profile", "identify", T0 + 2, lead="v", traits={"employees": 120, "email": "x@gmail.com"}),
    ]
    await store.apply(positions(events))
    view = await store.view("v", T0 + 3 * DAY)
    assert view.explanation.fit_score == 5 and view.explanation.fit_grade == "D"
    assert set(view.explanation.breakdown) == {"fast", "slow", "flat", "fitcat"}
    assert sum(view.explanation.breakdown.values()) == pytest.approx(view.explanation.score)
    assert sum(c.points for c in view.explanation.contributions) == pytest.approx(view.explanation.score)
    assert view.model_version == "test-1"
    assert await store.view("nobody", T0) is None


# What a lead can be sent, per model: (source, type, properties, traits). The test model's
# KINDS, a capped and a `once` rule, identifies that move the fit grade (SQL needs C); the
# default model's many rules per category (the order in which a sum adds its terms matters).
MOVES = {
    "test": [
        *[(source, type_, props, {}) for source, type_, props, _ in KINDS],
        ("email", "open", {}, {}),
        ("webinar", "registered", {}, {}),
        ("profile", "identify", {}, {"seniority": "vp"}),
        ("profile", "identify", {}, {"employees": 500}),
        ("profile", "identify", {}, {"employees": 10, "email": "x@gmail.com"}),
    ],
    "default": [
        *[("web", "page_view", {"url": f"https://x.io/{path}"}, {}) for path in ("pricing", "customers/a", "vs/y", "blog")],
        *[("web", type_, {}, {}) for type_ in ("demo_request", "form_submit", "content_download")],
        *[("email", type_, {}, {}) for type_ in ("open", "click", "reply", "unsubscribe", "bounce")],
        *[("webinar", type_, {}, {}) for type_ in ("registered", "question_asked", "no_show")],
        *[("webinar", "attended", {"minutes": m}, {}) for m in (45, 10)],
        ("profile", "identify", {}, {"seniority": "vp", "job_title": "VP Sales", "department": "sales"}),
        ("profile", "identify", {}, {"employees": 200, "industry": "saas", "annual_revenue": 2e7, "budget": "yes"}),
        ("profile", "identify", {}, {"employees": 5, "email": "x@gmail.com", "timeline": "now"}),
    ],
}


@pytest.mark.parametrize("which", ["test", "default"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(st.tuples(st.integers(0, 99), st.integers(0, 60 * DAY)), min_size=1, max_size=25))
def test_reads_and_handoffs_never_disagree(redis_server: RedisServer, tmodel: ScoringModel, model: ScoringModel,
                                           which: str, items: list[tuple[int, int]]) -> None:
    # After each event that causes a transition, and after the sweep's demotions, the lead is read
    # at crossed_at (GET /leads/{id}'s view, /leads/top's) and compared with the handoff: the same
    # state at the same instant, so the same score, breakdown, grade and contributions.
    from leadpulse.api import lead_json

    handoff_schema = jsonschema.Draft202012Validator(contract.load_schema("handoff.schema.json"),
                                                     format_checker=jsonschema.FormatChecker())
    used, moves = (tmodel, MOVES["test"]) if which == "test" else (model, MOVES["default"])

    async def run() -> list[tuple[Transition, LeadView | None, LeadView | None]]:
        client = Redis.from_url(redis_server.url)
        try:
            await client.flushdb()
            store = LeadStore(client, used)
            seen: list[tuple[Transition, LeadView | None, LeadView | None]] = []

            async def read(transitions: list[Transition]) -> None:
                for t in transitions:
                    top = {v.lead_id: v for v in await store.top(10, t.crossed_at)}
                    seen.append((t, await store.view("q", t.crossed_at), top.get("q")))

            for n, (kind, offset) in enumerate(items):
                source, type_, props, traits = moves[kind % len(moves)]
                e = event(source, type_, T0 + offset, lead="q", event_id=f"q{n}", traits=traits, **props)
                # The event's own transition: the state it was decided on is the one stored now (a
                # demotion caught up before the event was decided before the event's points).
                await read([t for t in (await store.apply([(e, f"t:0:{n}")])).transitions if t.event_id == e.event_id])
            await read(await store.sweep(T0 + 400 * DAY))
            return seen
        finally:
            await client.aclose()

    for t, view, top in asyncio.run(run()):
        assert view is not None and view.explanation == t.explanation
        if view.stage != used.stages[0].name:
            assert top is not None
        assert top is None or top.explanation == t.explanation
        record, read = handoff.build(used, t), lead_json(view)
        handoff_schema.validate(record)
        fields = ("score", "fit_grade", "fit_score", "breakdown")
        assert {k: record[k] for k in fields} == {k: read[k] for k in fields}
        signals = [{k: s[k] for k in ("rule_id", "category", "points", "last_occurred_at")} for s in record["top_signals"]]
        positive = [read["contributions"][i] for i, c in enumerate(view.explanation.contributions) if c.points > 0]
        assert signals == positive[: handoff.TOP_SIGNALS]
        # and the score reported is the one decided on
        if t.kind == "promoted":
            assert t.score >= t.threshold
        elif t.kind == "demoted":  # not sla_overdue (the default model's sales SLA): no score crossed
            assert t.score < t.threshold or t.explanation.fit_grade > (used.stages[t.from_stage].min_grade or "D")


def _as_stored_before(t: list[Any], state: layout.PackedState) -> list[Any]:
    """A transition (as the scripts store it) as the previous version stored it, in JSON: numbers
    as text, the score, then the lead's sums (lib.lua's former `snapshot`) for the explanation."""
    base = state.base
    snapshot = ["L", str(base + state.landmark), "s", str(state.stage), "c", str(base + state.clock)]
    for code, (total, last) in state.sums.items():
        snapshot += [f"r:{code}", f"{float(total)!r} {base + last}"]
    for code, points in state.fit.items():
        snapshot += [f"f:{code}", repr(float(points))]
    seq, kind, frm, to, at, event_id, threshold, explanation = t
    return [seq, kind, frm, to, str(at), event_id, repr(float(explanation[0])), repr(float(threshold)), snapshot]


async def test_transitions_stored_by_the_previous_version_come_back_explained(store: LeadStore, redis: Redis) -> None:
    # Replay logs and outboxes written before transitions carried their explanation hold the
    # lead's sums instead: a replay or a re-sweep explains them from those sums, as then.
    demo = event("web", "demo_request", T0, lead="old")
    promoted = (await store.apply(positions([demo]))).transitions
    keys = store.keys.lead("old")
    state = layout.unpack(await redis.get(keys.state))
    assert state is not None and [t.to_stage for t in promoted] == [1]
    log = msgpack.unpackb(await redis.get(keys.replay))
    for rec in log:
        rec[2] = [_as_stored_before(t, state) for t in rec[2]]
    await redis.set(keys.replay, orjson.dumps(log))
    replayed = await store.apply([(demo, "t:0:0")])
    assert replayed.outcomes == [DUPLICATE] and replayed.transitions == promoted
    (demoted,) = await store.sweep(T0 + 20 * DAY)  # below the floor 35 after 30d·log2(50/35)
    state = layout.unpack(await redis.get(keys.state))
    assert state is not None
    outbox = msgpack.unpackb(await redis.get(keys.outbox))
    await redis.set(keys.outbox, orjson.dumps([_as_stored_before(t, state) for t in outbox]))
    assert await store.sweep(T0 + 21 * DAY) == [demoted]


async def test_top_ranks_staged_leads_by_score_now(store: LeadStore) -> None:
    await store.apply(positions([event("web", "demo_request", T0, lead="old")]))
    await store.apply(positions([event("web", "demo_request", T0 + 10 * DAY, lead="new")]))
    await store.apply(positions([event("web", "page_view", T0, lead="cold", url="/blog")]))
    top = await store.top(10, T0 + 11 * DAY)
    assert [v.lead_id for v in top] == ["new", "old"]
    assert top[0].explanation.score > top[1].explanation.score


async def test_decay_demotions_are_the_same_whether_swept_in_time_or_caught_up_later(store: LeadStore) -> None:
    def history(lead: str) -> list[Event]:
        return [
            event("profile", "identify", T0, lead=lead, traits={"seniority": "vp"}),
            event("web", "demo_request", T0 + 1, lead=lead),
            event("web", "page_view", T0 + 2, lead=lead, url="/pricing"),
            event("webinar", "attended", T0 + 3, lead=lead, minutes=50),
        ]

    def shape(ts: list[Any]) -> list[tuple[Any, ...]]:
        return [(t.seq, t.kind, t.from_stage, t.to_stage, t.crossed_at, round(t.score, 9)) for t in ts]

    swept, caught = [], []
    swept.extend((await store.apply(positions(history("sw")))).transitions)
    # SQL at 118 points; decay takes it below SQL's floor (85) after ~6 days and below MQL's
    # floor (35) after ~70 days. "sw" is swept at day 100, "cu" only sees its next event.
    swept_now = await store.sweep(T0 + 100 * DAY)
    await store.ack(swept_now)
    swept.extend(swept_now)
    caught.extend((await store.apply(positions(history("cu")))).transitions)
    later = lambda lead: [event("web", "page_view", T0 + 120 * DAY, lead=lead, url="/blog")]  # noqa: E731
    swept.extend((await store.apply(positions(later("sw")))).transitions)
    caught.extend((await store.apply(positions(later("cu")))).transitions)
    assert [t[1:4] for t in shape(swept)] == [
        ("promoted", 0, 1), ("promoted", 1, 2), ("demoted", 2, 1), ("demoted", 1, 0)]
    assert shape(swept) == shape(caught)


async def test_a_changed_model_never_jams_the_store(store: LeadStore, redis: Redis, tmodel: ScoringModel) -> None:
    await store.apply(positions([
        event("web", "demo_request", T0, lead="mc"),
        event("web", "page_view", T0 + 1, lead="mc", url="/pricing"),
        event("webinar", "attended", T0 + 2, lead="mc", minutes=50),
        event("profile", "identify", T0 + 3, lead="mc", traits={"seniority": "vp"}),
        *[event("email", "open", T0 + 4 + k, lead="mc") for k in range(3)],
    ]))
    assert (await store.view("mc", T0 + 5)).stage == "sql"
    # Marketing ops drops the SQL stage and turns the windowed open cap into `once`.
    changed = parse_model(
        MODEL.replace("  - {name: sql, min_score: 90, min_grade: C, handoff: true}\n", "")
        .replace("cap: {points: 10, window: 7d}", "once: true"),
        "changed",
    )
    other = LeadStore(redis, changed)
    result = await other.apply(positions([event("email", "open", T0 + 10, lead="mc")]))
    assert result.outcomes == [SCORED]
    view = await other.view("mc", T0 + 10)
    assert view.stage == "mql"
    assert {c.rule_id: c.points for c in view.explanation.contributions}["opens"] == pytest.approx(10, rel=1e-3)


async def test_free_form_properties_never_break_matching(redis: Redis) -> None:
    model = parse_model(MODEL.replace('url: {glob: "*/pricing*"}', "url: {not_in: [a, b]}"), "t")
    store = LeadStore(redis, model)
    weird = [event("web", "page_view", T0 + k, lead="ff", url=value)
             for k, value in enumerate([["a"], {"x": 1}, None, 3.5, "ok"])]
    result = await store.apply(positions(weird))
    assert result.outcomes == [SCORED] * 5
