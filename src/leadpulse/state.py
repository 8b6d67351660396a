"""Lead state in Redis: apply batches of events, read leads, sweep decayed leads.

The batch path is the main path: a batch of events for many leads costs one pipelined round
trip of apply.lua calls, plus one before it only when the batch holds anonymous events or
profile updates (alias look-ups, current traits) and one after it only when visitors are linked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import orjson
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from . import erasure, experiments, rawpipe, scripts
from .bounded import Recent
from .bounds import Retention
from .engine import Scorer
from .errors import LeadUnreadable, StateError
from .events import Event
from .explanation import LeadView, explained
from .keys import Keys
from .model import ScoringModel
from .opparts import Matches, dedup_member, pack
from .redisconn import failure as _failure
from .spec import lua_spec
from .transition import OutcomeSnapshot, Transition
from .who import OPT_OUT_EVENTS, decode_traits

__all__ = ["LeadStore", "Transition", "OutcomeSnapshot", "BatchResult", "dedup_member", "Skipped"]

log = logging.getLogger("leadpulse.state")
#: a lead a read or sweep could not read: (lead id, reason: script_error | bad_reply, the error)
Skipped = tuple[str, str, Exception]

#: leads per apply.lua call: large enough to amortise the call, small enough not to block Redis
LEADS_PER_CALL = 128
#: links of anonymous visitors the worker remembers (~140 B each); older ones are looked up again
ALIAS_CACHE = 50_000


def log_skipped_read(lead_id: str, reason: str, exc: Exception) -> None:
    log.error("read skipped lead %r (%s: %s: %s); the other leads were read", lead_id, reason, type(exc).__name__, exc)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _unpack(reply: bytes) -> Any:
    """A script's reply packed with cmsgpack (apply.lua, sweep.lua, read.lua)."""
    return msgpack.unpackb(reply, raw=False, strict_map_key=False)


#: outcome of each event in a batch; ERASED: refused, its lead was erased (its tombstone, erase.lua)
SCORED, DUPLICATE, ANONYMOUS, ERASED = "scored", "duplicate", "anonymous", "erased"
_STATUS = {"o": SCORED, "d": DUPLICATE, "e": ERASED}


@dataclass(slots=True)
class BatchResult:
    outcomes: list[str]
    transitions: list[Transition] = field(default_factory=list)
    #: the CRM outcomes applied (or replayed): each becomes a record on leads.outcomes
    crm: list[OutcomeSnapshot] = field(default_factory=list)


@dataclass(slots=True)
class _LeadOps:
    ops: list[list[Any]] = field(default_factory=list)
    index: list[int] = field(default_factory=list)  # position in the batch, -1 for merged ops


class LeadStore:
    def __init__(self, redis: Redis, model: ScoringModel, keys: Keys | None = None,
                 retention: Retention | None = None) -> None:
        self.redis = redis
        self.keys = keys or Keys(cluster=isinstance(redis, RedisCluster))
        #: no keys given: the store follows the deployment's current key space (keys.py), read
        #: at first use; a worker is told of a switch (handover.py) and calls `use_space`
        self._locate = keys is None
        self.retention = retention or Retention()
        self.scripts = scripts.Scripts(redis)
        self.use_model(model)
        #: anonymous_id -> lead_id, the ALIAS_CACHE newest (Redis keeps every link: a miss looks it up)
        self._aliases: Recent[str, str] = Recent(ALIAS_CACHE)
        #: told of each lead a read skipped (lead, reason, error): logs it; the worker's counts it too
        self.on_skip: Callable[[str, str, Exception], None] = log_skipped_read

    @property
    def aliases(self) -> Recent[str, str]:
        """The cached visitor links (read-only use: the worker reports their number)."""
        return self._aliases

    def use_model(self, model: ScoringModel) -> None:
        """Score with `model` from the next call on (a hot reload: models.py). Rule codes are
        given to its new rules at the next call; the states keep theirs (rules.lua)."""
        self.retention.check(model)
        self.model = model
        self.scorer = Scorer(model)
        #: the spec's category order: explanations name categories by index in it
        self.categories = tuple(model.categories)
        #: rule id <-> code (rules.lua), and the spec built with them: read at first use
        self.rule_codes: dict[str, int] = {}
        self.matches = Matches()
        self.rule_names: dict[int, str] = {}
        self.spec = b""
        self.split, self.arm_specs = experiments.split(model), dict[str, bytes]()  # an A/B test: each arm's spec (ready)
        self._reloads = -1  # scripts.reloads when the rule codes were read

    def use_space(self, space: str) -> None:
        """Keep leads in `space` from now on (the switch of a rescore, handover.py)."""
        self.keys = self.keys.in_space(space)
        self._locate = False
        self._reloads = -1  # the space has its own rule-code table
        self._aliases.clear()

    def in_space(self, space: str) -> LeadStore:
        """A store on the same Redis and model with its leads in `space`."""
        return LeadStore(self.redis, self.model, self.keys.in_space(space), self.retention)

    async def ready(self) -> None:
        """Find the current key space (once, unless keys were given), read (or give) the rule
        codes and build the spec: at first use, and again after the scripts had to be reloaded
        (Redis restarted, perhaps without its data: then the codes this process knew are given
        back, rules.lua)."""
        if self._locate:
            pointer = await self.redis.get(self.keys.pointer)
            if pointer:
                self.keys = self.keys.in_space(_text(pointer))
            self._locate = False
        if self._reloads == self.scripts.reloads:
            return
        ids = [r.id for r in (*self.model.rules, *self.model.fit.rules)]
        args = [x for rule_id in ids for x in (rule_id, self.rule_codes.get(rule_id, 0))]
        flat = [_text(x) for x in await self.scripts.run(scripts.RULES, [self.keys.rules], args)]
        table = dict(zip(flat[::2], flat[1::2]))
        self.rule_codes = {name: int(code) for name, code in table.items() if not name.startswith("#")}
        self.rule_names = {code: name for name, code in self.rule_codes.items()}
        self.spec = lua_spec(self.model, self.rule_codes, self.retention.lead_ttl_ms, self.retention.activity_max)
        self.arm_specs = {arm: lua_spec(m, self.rule_codes, self.retention.lead_ttl_ms, self.retention.activity_max) for arm, m in self.split.models.items()} if self.split else {}
        self._reloads = self.scripts.reloads

    def spec_of(self, lead_id: str) -> bytes:  # its arm's spec in an A/B test, else the model's
        return self.spec if self.split is None else self.arm_specs[self.split.arm_of(lead_id)]

    async def apply(self, batch: Sequence[tuple[Event, str]], now: int | None = None) -> BatchResult:
        """Apply validated events (each with its source position, e.g. "events.web:3:1207").

        `now` (epoch ms, default the wall clock) only times the dedup window. Raises StateError
        when Redis cannot serve for now, RedisRefused when it refused something in the batch.
        """
        try:
            await self.ready()
        except RedisError as exc:  # the rule codes, not the batch: never blamed on its events
            raise StateError(f"redis: {exc}") from exc
        try:
            return await self._apply(batch, int(time.time() * 1000) if now is None else now)
        except (RedisError, RedisClusterException) as exc:
            raise _failure(exc) from exc

    async def _apply(self, batch: Sequence[tuple[Event, str]], now: int) -> BatchResult:
        outcomes = [SCORED] * len(batch)
        traits_now = await self._prefetch(batch)
        leads: dict[str, _LeadOps] = {}
        anon: dict[str, list[tuple[int, list[Any]]]] = {}
        links: list[tuple[str, str]] = []
        routed: dict[str, set[str]] = {}  # lead -> visitors whose events went to it in this batch
        for i, (event, pos) in enumerate(batch):
            lead_id = event.lead_id or self._aliases.get(event.anonymous_id or "")
            op = self._op(event, pos, lead_id, traits_now)
            if lead_id is None:
                anon.setdefault(event.anonymous_id or "", []).append((i, op))
                continue
            if event.lead_id and event.anonymous_id and event.source == "profile":
                links.append((event.anonymous_id, event.lead_id))
            elif event.lead_id is None and event.anonymous_id:
                routed.setdefault(lead_id, set()).add(event.anonymous_id)
            slot = leads.get(lead_id)
            if slot is None:  # not setdefault: that would build a _LeadOps per event
                slot = leads[lead_id] = _LeadOps()
            slot.ops.append(op)
            slot.index.append(i)
        if links:
            links = await self._link(links, leads, batch)
            for anon_id, owner in links:
                routed.setdefault(owner, set()).add(anon_id)
        calls = self._apply_calls(leads, now)
        keep = self.retention
        for anon_id, items in anon.items():
            k = self.keys.anon(anon_id)
            # A logged op is merged unevaluated (5th field 0): its event id and position, which
            # only name a transition's trigger and a replay, are dropped. What is left (hash,
            # time, matches) is bounded by the model, not by the input.
            logged = [orjson.dumps([op[0], op[1], "", "", 0, *op[5:]]).decode() for _, op in items]
            calls.append((scripts.ANON, k, [keep.anon_ttl_ms, keep.anon_max_events, now, self.model.dedup_window, *logged]))
        replies = await self.scripts.pipelined(calls)
        result = BatchResult(outcomes)
        n_apply = len(calls) - len(anon)
        erased = self._collect(leads, replies[:n_apply], result)
        redirected: dict[str, _LeadOps] = {}
        for (anon_id, items), reply in zip(anon.items(), replies[n_apply:]):
            kind, value = _text(reply[0]), reply[1]
            if kind == "lead":  # linked by another worker meanwhile: score into the lead
                lead_id = _text(value)
                self._aliases[anon_id] = lead_id
                routed.setdefault(lead_id, set()).add(anon_id)
                slot = redirected.setdefault(lead_id, _LeadOps())
                for i, op in items:
                    slot.ops.append(op)
                    slot.index.append(i)
            else:
                for i, _ in items:
                    outcomes[i] = ANONYMOUS
        if redirected:
            erased |= self._collect(redirected, await self.scripts.pipelined(self._apply_calls(redirected, now)), result)
        if links:
            await self.scripts.pipelined([(scripts.RETIRE, self.keys.anon(a), []) for a, owner in links
                                                 if owner not in erased])
        if erased:  # visitors of an erased lead (a stale link, a rescore's identify) lose the link
            await erasure.unlink(self, erased, routed)
        return result

    def _op(self, event: Event, pos: str, lead_id: str | None, traits_now: dict[str, dict[str, Any]]) -> list[Any]:
        codes = self.rule_codes
        matches = self.matches.of(event, self.scorer, codes)
        fit: Any = False  # an identify's fit points, its traits, and how many fit traits they hold
        traits: Any = False
        known: Any = False
        if event.source == "profile" and event.type == "identify" and lead_id is not None:
            kept = {k: v for k, v in event.traits.items() if k in self.retention.who_traits}
            merged = {**traits_now.get(lead_id, {}), **kept, **self.scorer.kept_traits(event.traits)}
            traits_now[lead_id] = merged
            fit = [x for rule_id, points in self.scorer.fit(merged).items() for x in (codes[rule_id], points)]
            traits = orjson.dumps(merged).decode()
            known = self.scorer.known(merged)
        elif (opt_out := OPT_OUT_EVENTS.get((event.source, event.type))) and event.lead_id is not None:
            traits_now[event.lead_id] = {**traits_now.get(event.lead_id, {}), opt_out: event.occurred_at}
            traits = orjson.dumps(traits_now[event.lead_id]).decode()  # who.py: no sales alert after it
        outcome: list[Any] = [False, False]
        if event.source == "crm":  # lib.lua `outcome`: the lifecycle section decides what it does
            reason = event.properties.get("reason")
            outcome = [event.type, str(reason)[:256] if reason is not None else False]
        return [dedup_member(event.event_id), event.occurred_at, event.event_id, pos, 1, matches, fit, traits,
                *outcome, known]

    async def _prefetch(self, batch: Sequence[tuple[Event, str]]) -> dict[str, dict[str, Any]]:
        """One round trip for what the batch needs to know first: aliases and current traits."""
        unknown: set[str | None] = set()
        identified: set[str] = set()
        aliases = self._aliases
        for e, _ in batch:  # one pass: most events are a lead's page view or email event
            if e.lead_id is None:
                if e.anonymous_id not in aliases:
                    unknown.add(e.anonymous_id)
            elif e.lead_id and (e.source == "profile" and e.type == "identify" or (e.source, e.type) in OPT_OUT_EVENTS):
                identified.add(e.lead_id)
        unknown.discard(None)
        if not unknown and not identified:
            return {}
        anon_ids = sorted(a for a in unknown if a)
        lead_ids = sorted(identified)  # type: ignore[arg-type]
        commands: list[tuple[Any, ...]] = [("GET", self.keys.anon(a).alias) for a in anon_ids]
        for lead in lead_ids:
            k = self.keys.lead(lead)
            commands.append(("GET", k.traits))
            commands.append(("EXISTS", k.state))
        replies = rawpipe.checked(await rawpipe.execute(self.redis, commands))
        for a, lead in zip(anon_ids, replies[: len(anon_ids)]):
            if lead is not None:
                self._aliases[a] = _text(lead)
        traits = replies[len(anon_ids) :]
        # Traits may outlive an expired state by up to lead_ttl/8 (lib.lua): a lead that comes
        # back after expiring starts afresh, without them.
        return {lead: orjson.loads(raw) for lead, raw, state in zip(lead_ids, traits[::2], traits[1::2]) if raw and state}

    async def _link(self, links: list[tuple[str, str]], leads: dict[str, _LeadOps],
                    batch: Sequence[tuple[Event, str]]) -> list[tuple[str, str]]:
        """Link visitors to leads (link.lua); returns (visitor, the lead it belongs to) per link."""
        await erasure.register(self, links)  # first: no link that erasing its lead could not find
        calls = [(scripts.LINK, self.keys.anon(a), [lead, self.retention.alias_ttl_ms]) for a, lead in links]
        owners = []
        for (anon_id, _), reply in zip(links, await self.scripts.pipelined(calls)):
            owner = _text(reply[0])
            owners.append((anon_id, owner))
            self._aliases[anon_id] = owner
            logged = [orjson.loads(op) for op in reply[1:]]
            if not logged:
                continue
            slot = leads.setdefault(owner, _LeadOps())
            # The visitor's events go in before the link event, in time order, unevaluated:
            # the link event then decides the stage once, with everything merged.
            logged.sort(key=lambda op: op[1])
            slot.ops[0:0] = logged
            slot.index[0:0] = [-1] * len(logged)
        return owners

    def forget_links(self, leads: set[str]) -> None:
        """Drop remembered links to these (erased) leads."""
        for anon_id in [a for a, lead in self._aliases.items() if lead in leads]:
            del self._aliases[anon_id]

    def _apply_calls(self, leads: dict[str, _LeadOps], now: int) -> list[tuple[scripts.Script, list[str], list[Any]]]:
        """apply.lua calls for `leads`, in the order of `leads` (the replies are read in it).

        One call: up to LEADS_PER_CALL leads of one index shard (a cluster slot) and one spec (an arm).
        """
        groups: dict[tuple[str, bytes], list[tuple[str, _LeadOps]]] = {}
        for item in leads.items():
            groups.setdefault((self.keys.shard(item[0]), self.spec_of(item[0])), []).append(item)
        calls = []
        for (shard, spec), items in groups.items():
            due, top = self.keys.indexes(shard)
            for start in range(0, len(items), LEADS_PER_CALL):
                keys = [due, top]
                args: list[Any] = [spec, now]
                for lead_id, slot in items[start : start + LEADS_PER_CALL]:
                    k = self.keys.lead(lead_id)
                    keys.extend((k.state, k.dedup, k.replay, k.traits, k.activity))
                    args.append(pack([lead_id, slot.ops]))
                calls.append((scripts.APPLY, keys, args))
        if len(groups) > 1:  # replies come back per call: put `leads` in call order
            ordered = [item for items in groups.values() for item in items]
            leads.clear()
            leads.update(ordered)
        return calls

    def _collect(self, leads: dict[str, _LeadOps], replies: list[Any], result: BatchResult) -> set[str]:
        """Outcomes and transitions into `result`; returns the leads found erased."""
        erased = set()
        items = iter(leads.items())
        for reply in replies:
            for lead_reply in _unpack(reply):  # apply.lua answers one packed string per call
                lead_id, slot = next(items)
                statuses, transitions, traits = _text(lead_reply[0]), lead_reply[1], decode_traits(lead_reply[4])
                for status, i in zip(statuses, slot.index):
                    if i >= 0:
                        result.outcomes[i] = _STATUS[status]
                if statuses[:1] == "e":
                    erased.add(lead_id)
                result.transitions.extend(Transition.from_reply(lead_id, t, self.rule_names, self.categories, traits)
                                          for t in transitions)
                result.crm.extend(OutcomeSnapshot.from_reply(lead_id, o, self.rule_names, self.categories)
                                  for o in lead_reply[3])
        return erased

    def _lead_keys(self, lead_id: str) -> list[str]:
        """KEYS of sweep.lua and ack.lua: the lead's index shard, then its state, outbox, traits
        and activity log (sweep.lua writes it)."""
        k = self.keys.lead(lead_id)
        return [*self.keys.indexes(self.keys.shard(lead_id)), k.state, k.outbox, k.traits, k.activity]

    async def view(self, lead_id: str, at: int) -> LeadView | None:
        """The lead at the instant `at`; None when it has no state. A state read.lua cannot read
        raises LeadUnreadable (a StateError): one lead asked for, so there is nothing to skip to."""
        skipped: list[Skipped] = []
        (view,) = await self.read([(lead_id, at)], skipped)
        if skipped:
            _, reason, exc = skipped[0]
            raise LeadUnreadable(lead_id, reason, exc)
        return view

    async def top(self, limit: int, at: int, skipped: list[Skipped] | None = None) -> list[LeadView]:
        """The hottest staged leads now: candidates from the top index, re-ranked exactly. A lead
        that cannot be read is skipped (see `read`)."""
        want = max(limit * 4, 20)
        try:
            await self.ready()
            pipe = self.redis.pipeline(transaction=False)
            for shard in self.keys.shards():
                pipe.zrevrange(self.keys.indexes(shard)[1], 0, want - 1, withscores=True)
            ranked = [(rank, _text(m)) for rows in await pipe.execute() for m, rank in rows]
        except RedisError as exc:
            raise StateError(f"redis: {exc}") from exc
        candidates = [lead for _, lead in sorted(ranked, reverse=True)[:want]]
        views = [v for v in await self.read([(lead, at) for lead in candidates], skipped) if v is not None]
        views.sort(key=lambda v: v.explanation.score, reverse=True)
        return views[:limit]

    async def read(self, leads: Sequence[tuple[str, int]], skipped: list[Skipped] | None = None) -> list[LeadView | None]:
        """Leads, each at its instant (lead id, epoch ms), in their order (None: no state), as
        read.lua explains them: one call per index shard (one cluster slot) and LEADS_PER_CALL
        leads, all in one round trip.

        A lead read.lua fails on (a corrupt state: script_error) or whose reply cannot be read
        (bad_reply) reads as None and the others are read: a failed call is run again one lead per
        call (a second round trip, only then) to find it. Each such lead goes to `skipped` as
        (lead, reason, error), or without `skipped` to `on_skip` (logs it; the worker's counts it too)."""
        try:
            await self.ready()
            groups: dict[tuple[str, bytes], list[int]] = {}
            for i, (lead, _) in enumerate(leads):
                groups.setdefault((self.keys.shard(lead), self.spec_of(lead)), []).append(i)
            parts = [(spec, m[i : i + LEADS_PER_CALL]) for (_, spec), m in groups.items() for i in range(0, len(m), LEADS_PER_CALL)]
            views: list[LeadView | None] = [None] * len(leads)
            failed = await self._read_parts(leads, parts, views)
            # one lead per call: the failures left are each their lead's alone
            alone = [(spec, [i]) for spec, part, _ in failed if len(part) > 1 for i in part]
            failed = [f for f in failed if len(f[1]) == 1] + await self._read_parts(leads, alone, views)
        except RedisError as exc:
            raise StateError(f"redis: {exc}") from exc
        for _, (i,), (reason, exc) in failed:
            if skipped is not None:
                skipped.append((leads[i][0], reason, exc))
            else:
                self.on_skip(leads[i][0], reason, exc)
        return views

    async def _read_parts(self, leads: Sequence[tuple[str, int]], parts: list[tuple[bytes, list[int]]],
                          views: list[LeadView | None]) -> list[tuple[bytes, list[int], tuple[str, Exception]]]:
        """Run read.lua on `parts` into `views`; returns the parts that failed, with reason and error."""
        calls = [(scripts.READ, [self.keys.lead(leads[i][0]).state for i in part], [spec, *(leads[i][1] for i in part)])
                 for spec, part in parts]
        failed = []
        for (spec, part), reply in zip(parts, await self.scripts.pipelined(calls, raise_on_error=False)):
            if isinstance(reply, Exception) and type(reply) is not ResponseError:  # OOM, connection…
                raise StateError(f"redis: {reply}") from reply  # Redis's own errors, not a lead's
            try:
                if isinstance(reply, ResponseError):  # the script failed on a lead of this call
                    raise reply
                found_all = _unpack(reply)
                read = [self._view(leads[i], found) for i, found in zip(part, found_all, strict=True)]
            except (ResponseError, ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException) as exc:
                failed.append((spec, part, ("script_error" if isinstance(exc, ResponseError) else "bad_reply", exc)))
                continue
            for i, view in zip(part, read):
                views[i] = view
        return failed

    def _view(self, lead: tuple[str, int], found: Any) -> LeadView | None:
        if not found:  # [stage, clock, explanation]; false: no state (or erased)
            return None
        stage, clock, why, cooldown = found
        return LeadView(*lead, self.model.stage_names[stage], clock, self.model.version,
                        explained(why, self.rule_names, self.categories), cooldown or None)

    async def sweep(self, now: int, limit: int = 500, due_at: list[float] | None = None,
                    skipped: list[Skipped] | None = None) -> list[Transition]:
        """Demote the leads decayed below their stage's floor by `now`; `ack` the transitions returned
        once published. `due_at` receives the due time (ms) of each entry read, up to `limit` per shard.
        With `skipped`, a lead whose sweep.lua call fails (e.g. a state it cannot unpack) or whose reply
        cannot be read goes there as (lead, reason, error) and the others are swept."""
        try:
            await self.ready()
            pipe = self.redis.pipeline(transaction=False)
            for shard in self.keys.shards():
                pipe.zrangebyscore(self.keys.indexes(shard)[0], "-inf", now, start=0, num=limit, withscores=True)
            rows = [row for shard_rows in await pipe.execute() for row in shard_rows]
            if due_at is not None:  # as soon as read: a pass that fails after it still shows its backlog
                due_at.extend(at for _, at in rows)
            due = [_text(m) for m, _ in rows[:limit]]
            calls = [(scripts.SWEEP, self._lead_keys(lead), [self.spec_of(lead), now, lead]) for lead in due]
            replies = await self.scripts.pipelined(calls, raise_on_error=skipped is None)
        except RedisError as exc:
            raise StateError(f"redis: {exc}") from exc
        out: list[Transition] = []
        for lead, reply in zip(due, replies):
            if isinstance(reply, Exception) and type(reply) is not ResponseError:  # OOM, READONLY…
                raise StateError(f"redis: {reply}") from reply  # Redis's own errors, not the lead's
            try:
                if isinstance(reply, ResponseError):  # only with `skipped`: the script failed on this lead
                    raise reply
                transitions, traits = _unpack(reply)  # sweep.lua: the lead's traits beside them
                out.extend([Transition.from_reply(lead, t, self.rule_names, self.categories, decode_traits(traits))
                            for t in transitions])
            except (ResponseError, ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException) as exc:
                if skipped is None:
                    raise
                skipped.append((lead, "script_error" if isinstance(exc, ResponseError) else "bad_reply", exc))
        return out

    async def ack(self, transitions: Sequence[Transition]) -> None:
        last: dict[str, int] = {}
        for t in transitions:
            last[t.lead_id] = max(t.seq, last.get(t.lead_id, 0))
        try:
            await self.ready()
            now = int(time.time() * 1000)
            calls = [(scripts.ACK, self._lead_keys(lead), [self.spec_of(lead), lead, seq, now]) for lead, seq in last.items()]
            await self.scripts.pipelined(calls)
        except RedisError as exc:
            raise StateError(f"redis: {exc}") from exc
