"""Idle decay (docs/scoring.md §4, Idle decay): nothing decays while the lead is active; each
`after` of idleness takes `lose_percent` of the idle categories' points, and losses stay lost.
Against a real redis-server, and against a reference of the rule as written (`frontier_value`)."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from leadpulse import layout
from leadpulse.dev.embedded import RedisServer
from leadpulse.errors import ModelError
from leadpulse.keys import Keys
from leadpulse.model import ScoringModel, parse_model
from leadpulse.state import LeadStore

from .support.fixtures import DAY, T0, event

EVERY = 10 * DAY
KEEP = 0.8
MODEL = """
version: idle-1
categories:
  web: {decay: {lose_percent: 20, after: 10d, mode: idle}}
  mail: {decay: {lose_percent: 20, after: 10d, mode: idle}}
  slow: {half_life: 30d}
  flat: {}
rules:
  - {id: visit, category: web, points: 3, when: {source: web, type: page_view}}
  - {id: demo, category: web, points: 50, when: {source: web, type: demo_request}}
  - {id: opens, category: mail, points: 4, cap: {points: 4, window: 7d}, when: {source: email, type: open}}
  - {id: click, category: mail, points: 7, when: {source: email, type: click}}
  - {id: webinar, category: slow, points: 20, when: {source: webinar, type: attended}}
  - {id: unsub, category: flat, points: -40, when: {source: email, type: unsubscribe}}
stages:
  - {name: lead, min_score: 0}
  - {name: mql, min_score: 40, handoff: true}
hysteresis: 5
max_event_age: null
"""
#: the idle kinds of the property test: (source, type, points)
KINDS = [("web", "page_view", 3.0), ("web", "demo_request", 50.0), ("email", "click", 7.0)]


@pytest.fixture(scope="module")
def imodel() -> ScoringModel:
    return parse_model(MODEL, "test")


def positions(events: list[Any]) -> list[tuple[Any, str]]:
    return [(e, f"t:0:{i}") for i, e in enumerate(events)]


def frontier_value(arrivals: list[tuple[int, float]], at: int) -> float:
    """The idle points at `at` of awards (time, points) applied in arrival order, as
    docs/scoring.md states the rule: the lead's idle history is made of its activities that
    arrived as its latest or its earliest so far; every award loses `1 - KEEP` per tick that
    history has after the award (a late award: from its time to the next activity of the
    history, then the history's own), and a late award changes nothing of the history."""
    history: list[int] = []
    for t, _ in arrivals:
        if not history or t > history[-1]:
            history.append(t)
        elif t < history[0]:
            history.insert(0, t)
    latest = history[-1]
    total = 0.0
    for t, p in arrivals:
        nxt = min(h for h in history if h >= t)
        ticks = (nxt - t) // EVERY
        ticks += sum((b - a) // EVERY for a, b in zip(history, history[1:]) if a >= nxt)
        ticks += max(0, at - latest) // EVERY
        total += p * KEEP**ticks
    return total


def lands_in_an_idle_stretch(arrivals: list[tuple[int, float]]) -> bool:
    """Whether an award arrived late into a gap of EVERY or more of the history as it then was."""
    history: list[int] = []
    for t, _ in arrivals:
        if not history or t > history[-1]:
            history.append(t)
        elif t < history[0]:
            history.insert(0, t)
        elif any(a < t < b and b - a >= EVERY for a, b in zip(history, history[1:])):
            return True
    return False


async def fresh(redis: Redis, model: ScoringModel) -> LeadStore:
    await redis.flushdb()
    return LeadStore(redis, model)


async def test_nothing_decays_while_active_then_steps_and_losses_stay(redis: Redis, imodel: ScoringModel) -> None:
    store = await fresh(redis, imodel)
    # Active for 40 days (a visit every 9 days): nothing lost.
    visits = [event("web", "page_view", T0 + k * 9 * DAY, lead="i") for k in range(5)]
    await store.apply(positions([event("web", "demo_request", T0, lead="i"), *visits]))
    last = T0 + 36 * DAY

    async def score(at: int) -> float:
        view = await store.view("i", at)
        assert view is not None
        return view.explanation.score

    assert await score(last) == pytest.approx(65)
    assert await score(last + EVERY - 1) == pytest.approx(65)  # idle just short of 10 days
    assert await score(last + EVERY) == pytest.approx(65 * 0.8)  # -20 %
    assert await score(last + 2 * EVERY + DAY) == pytest.approx(65 * 0.8**2)  # and again
    # Activity resumes after 25 idle days: the two losses stay, the new visit counts whole.
    back = last + 25 * DAY
    await store.apply(positions([event("web", "page_view", back, lead="i")]))
    assert await score(back) == pytest.approx(65 * 0.64 + 3)
    assert await score(back + EVERY) == pytest.approx((65 * 0.64 + 3) * 0.8)
    # Other categories keep their own decay: the webinar's half-life, the unsubscribe none.
    await store.apply(positions([event("webinar", "attended", back, lead="i"),
                                 event("email", "unsubscribe", back, lead="i")]))
    assert await score(back + 30 * DAY) == pytest.approx((65 * 0.64 + 3) * 0.8**3 + 10 - 40)


async def test_a_capped_event_is_activity_too(redis: Redis, imodel: ScoringModel) -> None:
    # Opens capped at 4 points a week, every 6 days: those of days 6 and 18 award 0, but the one
    # of day 18 keeps the lead active: no loss at day 22 (10 days after the last award).
    store = await fresh(redis, imodel)
    await store.apply(positions([event("email", "open", T0 + k * 6 * DAY, lead="o") for k in range(4)]))
    view = await store.view("o", T0 + 18 * DAY + EVERY - 1)
    assert view is not None and view.explanation.score == pytest.approx(8)
    view = await store.view("o", T0 + 18 * DAY + EVERY)
    assert view is not None and view.explanation.score == pytest.approx(8 * 0.8)


async def test_a_late_event_takes_its_own_losses_and_gives_none_back(redis: Redis, imodel: ScoringModel) -> None:
    store = await fresh(redis, imodel)
    # History: a demo at T0, then nothing for 25 days (two losses), then a visit.
    await store.apply(positions([event("web", "demo_request", T0, lead="l"), event("web", "page_view", T0 + 25 * DAY, lead="l")]))
    # A click at T0 + 12d arrives late: in order it would have kept the demo from losing twice.
    await store.apply(positions([event("email", "click", T0 + 12 * DAY, lead="l")]))
    view = await store.view("l", T0 + 25 * DAY)
    assert view is not None
    # The click: 13 idle days to the visit, one loss. The demo: its two losses stay.
    assert view.explanation.score == pytest.approx(50 * 0.64 + 7 * 0.8 + 3)
    assert view.explanation.breakdown == pytest.approx({"web": 50 * 0.64 + 3, "mail": 7 * 0.8})
    state = layout.unpack(await redis.get(store.keys.lead("l").state))
    assert state is not None and state.idle == [T0 + 25 * DAY, 2, T0, T0, T0 + 25 * DAY]  # A, K(A), first, one gap


async def test_an_event_older_than_the_history_extends_it_back(redis: Redis, imodel: ScoringModel) -> None:
    # Visits at days 27, then 20 and 6 arriving later: each is older than all before it, so the
    # history becomes 6, 20, 27 as in time order: the day-6 visit loses one tick (6 -> 20), not two.
    store = await fresh(redis, imodel)
    for day in (27, 20, 6):
        await store.apply(positions([event("web", "page_view", T0 + day * DAY, lead="b")]))
    view = await store.view("b", T0 + 31 * DAY)
    assert view is not None and view.explanation.score == pytest.approx(3 * 0.8 + 3 + 3)
    state = layout.unpack(await redis.get(store.keys.lead("b").state))
    assert state is not None and state.idle == [T0 + 27 * DAY, 0, T0 + 6 * DAY, T0 + 6 * DAY, T0 + 20 * DAY]


async def test_gaps_no_late_event_can_reach_are_dropped(redis: Redis, imodel: ScoringModel) -> None:
    # With max_event_age 30d (+ clock_skew 5m) an event lands at most that far behind the latest.
    store = await fresh(redis, parse_model(MODEL.replace("max_event_age: null", "max_event_age: 30d")))
    await store.apply(positions([event("web", "demo_request", T0, lead="g"), event("web", "page_view", T0 + 25 * DAY, lead="g"),
                                 event("web", "page_view", T0 + 100 * DAY, lead="g")]))
    state = layout.unpack(await redis.get(store.keys.lead("g").state))
    assert state is not None and state.idle == [T0 + 100 * DAY, 9, T0 + 25 * DAY, T0 + 25 * DAY, T0 + 100 * DAY]
    view = await store.view("g", T0 + 100 * DAY)
    assert view is not None and view.explanation.score == pytest.approx(50 * 0.8**9 + 3 * 0.8**7 + 3)


async def test_idle_decay_demotes_at_the_tick(redis: Redis, imodel: ScoringModel) -> None:
    store = await fresh(redis, imodel)
    (promoted,) = (await store.apply(positions([event("web", "demo_request", T0, lead="d")]))).transitions
    # 50 -> 40 -> 32 (< 35, the floor) at the second tick: due exactly then.
    assert await redis.zscore(store.keys.due, "d") == T0 + 2 * EVERY
    assert await store.sweep(T0 + 2 * EVERY - 1) == []
    (demoted,) = await store.sweep(T0 + 2 * EVERY)
    assert (demoted.kind, demoted.crossed_at) == ("demoted", T0 + 2 * EVERY)
    assert demoted.score == pytest.approx(32)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    # on a half-day grid as well as to the millisecond: gaps of exactly N, events at the same time
    items=st.lists(st.tuples(st.integers(0, len(KINDS) - 1),
                             st.integers(0, 240).map(lambda h: h * DAY // 2) | st.integers(0, 120 * DAY)),
                   min_size=1, max_size=30),
    order=st.randoms(use_true_random=False),
    read_after=st.integers(0, 40 * DAY),
)
def test_any_arrival_order_is_the_rule_as_written(redis_server: RedisServer, imodel: ScoringModel,
                                                 items: list[tuple[int, int]], order: Any, read_after: int) -> None:
    # Every award's own value is exact whatever its arrival; the score is the time-ordered one
    # whenever no event arrived late into an idle stretch (docs/scoring.md §4).
    events = [event(KINDS[k][0], KINDS[k][1], T0 + off, lead="p", event_id=f"p{n}") for n, (k, off) in enumerate(items)]
    order.shuffle(events)
    at = T0 + max(off for _, off in items) + read_after
    points = {(s, t): p for s, t, p in KINDS}
    arrivals = [(e.occurred_at, points[(e.source, e.type)]) for e in events]

    async def run() -> Any:
        client = Redis.from_url(redis_server.url)
        try:
            await client.delete(*Keys().lead("p"), "lp:due", "lp:top")
            store = LeadStore(client, imodel)
            for i in range(0, len(events), 7):
                await store.apply(positions(events[i : i + 7]))
            return await store.view("p", at)
        finally:
            await client.aclose()

    view = asyncio.run(run())
    expected = frontier_value(arrivals, at)
    assert view.explanation.score == pytest.approx(expected, rel=1e-12), (view.explanation.score, expected)
    if not lands_in_an_idle_stretch(arrivals):
        assert expected == pytest.approx(frontier_value(sorted(arrivals), at), rel=1e-12)


def test_idle_decay_is_one_clock_per_lead() -> None:
    with pytest.raises(ModelError, match="idle decay must be the same in every category using it"):
        parse_model(MODEL.replace("mail: {decay: {lose_percent: 20", "mail: {decay: {lose_percent: 25"))
    model = parse_model(MODEL)
    assert model.idle_decay is not None and model.idle_decay.after == EVERY
    assert model.categories["web"].half_life_ms is None  # no continuous decay besides
    assert math.isclose(parse_model(MODEL.replace(", mode: idle", "")).categories["web"].half_life_ms or 0,
                        10 * DAY * math.log(2) / -math.log(0.8))


async def test_the_activity_log_shows_each_award_as_idle_decay_left_it(redis: Redis, imodel: ScoringModel) -> None:
    from leadpulse import activity
    from leadpulse.activity import Scored
    from leadpulse.bounds import Retention

    await redis.flushdb()
    store = LeadStore(redis, imodel, retention=Retention(activity_max=50))
    await store.apply(positions([event("web", "demo_request", T0, lead="h"), event("web", "page_view", T0 + 25 * DAY, lead="h")]))
    log = [e for e in await activity.history(store, "h", T0 + 36 * DAY) if isinstance(e, Scored)]
    # earned as awarded; left: the demo lost the two ticks before the visit, both one more since
    assert [[(x.rule_id, x.points, pytest.approx(x.left)) for x in e.earned] for e in log] == [
        [("demo", 50.0, 50 * 0.8**3)], [("visit", 3.0, 3 * 0.8)]]
    view = await store.view("h", T0 + 36 * DAY)
    assert view is not None and view.explanation.score == pytest.approx(sum(x.left for e in log for x in e.earned))


async def test_a_capped_activity_behind_the_clock_moves_the_due_time(redis: Redis, imodel: ScoringModel) -> None:
    # MQL on a demo and an open (54, idle) and a webinar (20, 30-day half-life) that puts the
    # lead's clock at day 9. The floor (35) is crossed at the fourth tick, day 40 after the open.
    store = await fresh(redis, imodel)
    await store.apply(positions([event("web", "demo_request", T0, lead="u"), event("email", "open", T0 + 1, lead="u"),
                                 event("webinar", "attended", T0 + 9 * DAY, lead="u")]))
    assert await redis.zscore(store.keys.due, "u") == T0 + 1 + 4 * EVERY
    # An open at day 5, behind the clock, capped to 0 points: still activity, so the ticks (and
    # the due time) come 5 days later.
    await store.apply(positions([event("email", "open", T0 + 5 * DAY, lead="u")]))
    assert await redis.zscore(store.keys.due, "u") == T0 + 5 * DAY + 4 * EVERY


async def test_the_idle_sums_are_rescaled_long_before_they_overflow(redis: Redis) -> None:
    # A day's idle period: 300 idle days are 300 ticks, past the rescaling at 256.
    model = parse_model(MODEL.replace("after: 10d", "after: 1d"))
    store = await fresh(redis, model)
    await store.apply(positions([event("web", "demo_request", T0, lead="r"), event("web", "page_view", T0 + 300 * DAY, lead="r")]))
    state = layout.unpack(await redis.get(store.keys.lead("r").state))
    assert state is not None and state.idle is not None and state.idle[1] == 0  # K(A) rescaled to 0
    await store.apply(positions([event("email", "click", T0 + 100 * DAY, lead="r")]))  # late: 200 ticks to go
    view = await store.view("r", T0 + 302 * DAY)
    expected = (50 * 0.8**300 + 7 * 0.8**200 + 3) * 0.8**2
    assert view is not None and view.explanation.score == pytest.approx(expected, rel=1e-12)
    assert view.explanation.breakdown["mail"] == pytest.approx(7 * 0.8**202, rel=1e-12)
