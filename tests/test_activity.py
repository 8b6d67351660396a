"""The per-lead activity log (lua/activity.lua, history.lua, activity.py) on a real redis-server:
what each event earned and what is left of it, the moves, the cap, the expiry, erasure."""

from __future__ import annotations

import math

import pytest
from redis.asyncio import Redis

from leadpulse import activity
from leadpulse.admin import forget
from leadpulse.activity import Move, Scored
from leadpulse.bounds import Retention
from leadpulse.model import parse_model
from leadpulse.state import LeadStore

from tests.support.fixtures import DAY, T0, event

pytestmark = pytest.mark.integration

MODEL = """
version: act-1
categories:
  slow: {half_life: 10d}
  flat: {}
  fitcat: {}
rules:
  - {id: demo, category: slow, points: 50, when: {source: web, type: demo_request}}
  - {id: visit, category: slow, points: 3, cap: {points: 6, window: 7d}, when: {source: web, type: page_view}}
  - {id: unsub, category: flat, points: -40, when: {source: email, type: unsubscribe}}
fit:
  grades: {A: 30, B: 20, C: 10}
  rules:
    - {id: vp, category: fitcat, points: 20, when: {seniority: vp}}
stages:
  - {name: lead, min_score: 0}
  - {name: mql, min_score: 40, handoff: true}
hysteresis: 5
dedup_window: 1d
"""


def store(redis: Redis, activity_max: int = 50, lead_ttl_ms: int = 0) -> LeadStore:
    return LeadStore(redis, parse_model(MODEL), retention=Retention(lead_ttl_ms=lead_ttl_ms, activity_max=activity_max))


async def test_each_event_its_points_what_is_left_and_the_moves(redis: Redis) -> None:
    s = store(redis)
    await s.apply([(event("web", "page_view", T0, "a"), "p:0:1"), (event("web", "page_view", T0 + 1000, "a"), "p:0:2"),
                   (event("web", "page_view", T0 + 2000, "a"), "p:0:3"), (event("web", "demo_request", T0 + 3000, "a"), "p:0:4")])
    at = T0 + 10 * DAY
    log = await activity.history(s, "a", at)
    events = [e for e in log if isinstance(e, Scored)]
    moves = [e for e in log if isinstance(e, Move)]
    # the cap: 3 + 3, then nothing left to award
    assert [[(x.rule_id, x.points) for x in e.earned] for e in events] == [
        [("visit", 3.0)], [("visit", 3.0)], [("visit", 0.0)], [("demo", 50.0)]]
    demo = events[-1].earned[0]
    assert demo.left == pytest.approx(50 * math.exp(-math.log(2) / (10 * DAY) * (at - (T0 + 3000))), rel=1e-12)
    assert demo.left == pytest.approx(25, rel=1e-5)  # one half-life later (less 3 s)
    # the score after each event is the lead's, as lib.lua computes it
    assert [round(e.score, 6) for e in events] == pytest.approx([3, 6, 6, 56], abs=1e-3)
    assert [(m.kind, m.from_stage, m.to_stage, m.event_id) for m in moves] == [("promoted", "lead", "mql", events[-1].event_id)]
    # the move comes right after the event that caused it
    assert log.index(moves[0]) == log.index(events[-1]) + 1
    view = await s.view("a", events[-1].at)
    assert view is not None and view.explanation.score == pytest.approx(events[-1].score, abs=1e-9)


async def test_a_sweep_demotion_is_logged(redis: Redis) -> None:
    s = store(redis)
    await s.apply([(event("web", "demo_request", T0, "b"), "p:0:1")])
    swept = await s.sweep(T0 + 60 * DAY)
    assert [t.kind for t in swept] == ["demoted"]
    await s.ack(swept)
    moves = [e for e in await activity.history(s, "b", T0 + 60 * DAY) if isinstance(e, Move)]
    assert [(m.kind, m.to_stage) for m in moves] == [("promoted", "mql"), ("demoted", "lead")]
    assert moves[-1].at == swept[0].crossed_at and moves[-1].score < 35


async def test_the_log_keeps_the_newest_entries_up_to_its_cap(redis: Redis) -> None:
    s = store(redis, activity_max=5)
    # one batch of 12 events, then 3 more: the newest 5 stay
    await s.apply([(event("email", "unsubscribe", T0 + i, "c"), f"p:0:{i}") for i in range(12)])
    await s.apply([(event("email", "unsubscribe", T0 + 100 + i, "c", event_id=f"late-{i}"), f"p:0:{100 + i}")
                   for i in range(3)])
    log = await activity.history(s, "c", T0 + 1000)
    assert await redis.llen(s.keys.lead("c").activity) == 5
    assert [e.at for e in log] == [T0 + 10, T0 + 11, T0 + 100, T0 + 101, T0 + 102]


async def test_no_log_when_the_cap_is_zero(redis: Redis) -> None:
    s = store(redis, activity_max=0)
    await s.apply([(event("web", "demo_request", T0, "d"), "p:0:1")])
    assert await activity.history(s, "d", T0) == []
    assert not await redis.exists(s.keys.lead("d").activity)


async def test_the_log_lives_like_the_lead_and_goes_with_its_erasure(redis: Redis) -> None:
    s = store(redis, lead_ttl_ms=30 * DAY)
    await s.apply([(event("web", "page_view", T0, "e"), "p:0:1")])
    k = s.keys.lead("e")
    # in the first stage: it expires like the lead (ttl + ttl/8, as its traits)
    assert 30 * DAY < await redis.pttl(k.activity) <= 30 * DAY + 30 * DAY // 8
    await s.apply([(event("web", "demo_request", T0 + 1, "e"), "p:0:2")])
    assert await redis.pttl(k.activity) == -1  # above it: kept, like the state
    assert await forget(s, "e")
    assert not await redis.exists(k.activity)


async def test_a_promotion_by_a_new_models_reeval_keeps_the_log_like_the_state(redis: Redis) -> None:
    # lib.lua `save` sets and clears the log's expiry with the traits': reeval.lua, which
    # promotes without an event, must clear it too, or the log would expire under a kept lead.
    from leadpulse import reeval

    s = store(redis, lead_ttl_ms=30 * DAY)
    await s.apply([(event("web", "page_view", T0, "r"), "p:0:1")])  # 3 points: under the bar of 40
    k = s.keys.lead("r")
    assert 30 * DAY < await redis.pttl(k.activity) <= 30 * DAY + 30 * DAY // 8
    s.use_model(parse_model(MODEL.replace("{name: mql, min_score: 40,", "{name: mql, min_score: 2,")))
    (t,) = await reeval.decide(s, ["r"], T0 + 1000)
    assert (t.kind, t.to_stage) == ("promoted", 1)
    assert await redis.pttl(k.state) == -1 and await redis.pttl(k.activity) == -1


async def test_a_crm_move_carries_its_outcome_reason_and_cool_down(redis: Redis) -> None:
    # as a lifecycle transition reaches the log (activity.lua copies what follows the explanation)
    s = store(redis)
    rows = [[[2, T0 + 5, "recycled", 1, 0, 42.5, 60, "crm-7", "sql_rejected", "no budget", T0 + 30 * DAY], False],
            [[2, T0, "promoted", 0, 1, 61.0, 60, "ev-1"], False]]
    recycled, promoted = reversed(activity.decode(s, rows))
    assert isinstance(recycled, Move) and isinstance(promoted, Move)
    assert (recycled.kind, recycled.from_stage, recycled.to_stage, recycled.outcome, recycled.reason,
            recycled.cooldown_until) == ("recycled", "mql", "lead", "sql_rejected", "no budget", T0 + 30 * DAY)
    assert (promoted.outcome, promoted.reason, promoted.cooldown_until) == (None, None, None)
