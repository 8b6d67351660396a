"""After a model change, idle leads are decided again at the instant it became active.

Stage thresholds, grades, weights, caps, decay and removed rules change what existing leads
score and which stage they belong in; a lead with no new event would keep its old stage (and
its old due time) indefinitely. The sweeping worker (worker.py, under the sweep lock) therefore
walks the leads once per activation, at most `reeval_rate` leads a second, with reeval.lua:
promoted or demoted at the activation instant, the handoffs published like the sweep's.

Which leads: staged leads are all in the top index, read first (a demotion is what sales most
needs to hear). First-stage leads are in no index; they are walked with a SCAN of the lead
states, resumable (the cursor is kept in `<p>:reeval`), and only when the change could promote
one (`may_promote`: a lower bar into the second stage, heavier weights, higher caps, lower
grades, slower decay). Its cost: one SCAN step and one pipelined round trip of reeval.lua per
`budget` leads; reeval.lua reads and writes one state, like an event (docs/scoring.md).
On Redis Cluster the SCAN is not resumable across nodes: there only the staged leads are
decided again; first-stage leads take the new bar at their next event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
from redis.asyncio import Redis
from redis.exceptions import RedisError

from . import models, scripts
from .engine import grade_rank
from .errors import StateError
from .model import ScoringModel, Stage
from .state import LeadStore, Transition
from .who import decode_traits

log = logging.getLogger("leadpulse.reeval")

Publish = Callable[[list[Transition]], Awaitable[int]]


def may_demote_or_promote(old: ScoringModel, new: ScoringModel) -> bool:
    """Whether existing leads' stages can differ under `new`: anything a stored state is read
    with changed (points of new awards and descriptions are not)."""
    def read_with(m: ScoringModel) -> Any:
        return (
            [(s.name, s.min_score, s.min_grade, *_conditions(s)) for s in m.stages], m.hysteresis,
            dict(m.fit.grades), m.fit.unknown_below, m.fit.traits,
            {k: (c.weight, c.cap, c.half_life_ms, c.decay) for k, c in m.categories.items()},
            {r.id: (r.category, m.half_life_ms(r), r.intent) for r in m.rules},
            {r.id: r.category for r in m.fit.rules}, m.experiments,
            m.lifecycle.sla,  # SQLs' SLA deadlines are in the due index (re-indexed)
        )

    return bool(read_with(old) != read_with(new))


def may_promote(old: ScoringModel, new: ScoringModel) -> bool:
    """Whether a first-stage lead may be promoted by the change alone: the bar into the second
    stage is lower, or a stored state can score higher or grade better under `new`."""
    if len(new.stages) < 2:
        return False
    if len(old.stages) < 2 or old.experiments != new.experiments:  # an arm may have a lower bar
        return True
    o, n = old.stages[1], new.stages[1]
    if n.min_score < o.min_score or grade_rank(n.min_grade) < grade_rank(o.min_grade):
        return True
    # Stage conditions, U grades, intent marks, idle decay (docs/scoring.md §4-5): any change
    # may let a lead in; re-deciding one that stays costs a read.
    if _conditions(n) != _conditions(o) or new.fit.unknown_below != old.fit.unknown_below or new.fit.traits != old.fit.traits:
        return True
    if {r.id: r.intent for r in new.rules} != {r.id: r.intent for r in old.rules}:
        return True
    if any(c.decay != getattr(old.categories.get(k), "decay", None) for k, c in new.categories.items()):
        return True
    if any(new.fit.grades[g] < old.fit.grades[g] for g in ("A", "B", "C")):
        return True
    for name, cat in new.categories.items():
        before = old.categories.get(name)
        if before is None:
            return True  # rules may have moved into it
        if cat.weight > before.weight or (before.cap is not None and (cat.cap is None or cat.cap > before.cap)):
            return True
        if (cat.half_life_ms or float("inf")) > (before.half_life_ms or float("inf")):
            return True
    olds = {r.id: (r.category, old.half_life_ms(r)) for r in old.rules}
    return any(olds.get(r.id, (r.category, new.half_life_ms(r))) != (r.category, new.half_life_ms(r)) for r in new.rules)


def _conditions(stage: Stage) -> tuple[Any, ...]:
    return stage.min_points, stage.min_intent, stage.min_completeness


async def decide(store: LeadStore, leads: list[str], at: int) -> list[Transition]:
    """reeval.lua for each lead, in one round trip; their transitions (to publish, then ack)."""
    if not leads:
        return []
    now = int(time.time() * 1000)
    try:
        await store.ready()  # first: the spec is built there
        keys = store.keys
        calls = []
        for lead in leads:
            k = keys.lead(lead)
            calls.append((scripts.REEVAL, [*keys.indexes(keys.shard(lead)), k.state, k.outbox, k.traits,
                                           k.activity],
                          [store.spec_of(lead), at, lead, now]))
        replies = await store.scripts.pipelined(calls)
    except RedisError as exc:
        raise StateError(f"redis: {exc}") from exc
    out: list[Transition] = []
    for lead, reply in zip(leads, replies):
        transitions, traits = msgpack.unpackb(reply, raw=False, strict_map_key=False)  # the lead's traits beside
        out.extend(Transition.from_reply(lead, t, store.rule_names, store.categories, decode_traits(traits))
                   for t in transitions)
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def step(store: LeadStore, activation: int, publish: Publish, budget: int) -> int:
    """Re-evaluate up to `budget` leads of the pass for `activation` (starting it if it is new);
    returns the leads looked at (0: the pass is done). `store` scores with that activation's
    model. Resumable: the pass's place is kept in Redis after each step."""
    redis: Redis = store.redis
    k = store.keys
    await store.ready()
    raw = {_text(a): _text(b) for a, b in (await redis.hgetall(k.reeval)).items()}
    if raw.get("activation") != str(activation) or raw.get("space") != k.space:
        raw = await _start(redis, store, activation)
    phase = raw["phase"]
    if phase == "done":
        return 0
    at = int(raw["at"])
    if phase == "top":
        leads, done, place = await _staged(redis, store, raw["offset"], budget)
        await publish(await decide(store, leads, at))
        nxt = {"offset": place} if not done else (
            {"phase": "scan", "cursor": "0"} if raw["scan"] == "1" and not k.cluster else {"phase": "done"})
    else:
        cursor, found = await redis.scan(int(raw["cursor"]), match=k.state_pattern(), count=budget)
        leads = [k.lead_of(_text(key)) for key in found]
        await publish(await decide(store, leads, at))
        nxt = {"cursor": str(cursor)} if int(cursor) != 0 else {"phase": "done"}
    nxt["leads"] = str(int(raw.get("leads", "0")) + len(leads))
    await redis.hset(k.reeval, mapping=nxt)
    if nxt.get("phase") == "done":
        log.info("model activation %d: %s leads decided again at its instant", activation, nxt["leads"])
    return max(1, len(leads))  # a step that met no lead (SCAN may return none) still counts


#: index shards read per step on a cluster (each ZRANGE'd whole: staged leads are few per slot)
SHARDS_PER_STEP = 1024


async def _staged(redis: Redis, store: LeadStore, place: str, budget: int) -> tuple[list[str], bool, str]:
    """Staged leads from the top index, from `place` on: (leads, whether that was the last,
    the next place). ZSCAN on one Redis (a lead in the index throughout is met, whatever moves
    meanwhile); on a cluster, a slice of the index's shards."""
    k = store.keys
    if not k.cluster:
        cursor, rows = await redis.zscan(k.top, int(place), count=budget)
        return [_text(m) for m, _ in rows], int(cursor) == 0, str(cursor)
    start = int(place)
    shards = k.shards()[start : start + SHARDS_PER_STEP]
    pipe = redis.pipeline(transaction=False)
    for shard in shards:
        pipe.zrange(k.indexes(shard)[1], 0, -1)
    leads = [_text(m) for rows in await pipe.execute() for m in rows]
    end = start + len(shards)
    return leads, end >= len(k.shards()), str(end)


async def _start(redis: Redis, store: LeadStore, activation: int) -> dict[str, str]:
    log_ = {a.number: a for a in await models.history(redis, store.keys)}
    current = log_.get(activation)
    previous = max((n for n in log_ if n < activation), default=None)
    before = await models.load_activation(redis, store.keys, previous) if previous is not None else None
    record = {"activation": str(activation), "space": store.keys.space, "leads": "0", "offset": "0", "cursor": "0",
              "at": str(current.activated_at if current else int(time.time() * 1000))}
    if before is None or current is None or not may_demote_or_promote(before, store.model):
        record |= {"phase": "done", "scan": "0"}
    else:
        record |= {"phase": "top", "scan": "1" if may_promote(before, store.model) else "0"}
    pipe = redis.pipeline(transaction=True)
    pipe.delete(store.keys.reeval)
    pipe.hset(store.keys.reeval, mapping=record)
    await pipe.execute()
    return record
