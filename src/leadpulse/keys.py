"""Every Redis key LeadPulse writes, in one place.

All keys of one lead share one hash tag, so a lead's state lives in one hash slot and its Lua
scripts work on Redis Cluster. The prefix separates deployments sharing a Redis.

Lead and visitor keys, the indexes and the rule codes live in a **key space** `<s>`: the prefix
itself (`lp`, where every deployment started), or `<p>:g<n>` once `leadpulse rescore` rebuilt
the state into a fresh space and switched every process over to it (handover.py). The keys
below the prefix that are not in a space say which space is current and coordinate that switch:

  <p>:space          string  the current space's prefix (absent: the prefix itself)
  <p>:space-seq      string  the last space number given
  <p>:spaces         set     spaces being built by a rescore (a crashed one's is deleted later)
  <p>:switch         hash    a rescore's switch under way: id, to (the new space), phase
                             (building | pause | switched); leased (expires unless renewed)
  <p>:switch-acks    hash    worker id -> "held:<switch id>" / "switched:<switch id>"
  <p>:workers        zset    worker id -> wall-clock ms of its last heartbeat
  <p>:model{m}:active string the number of the active model activation (models.py)
  <p>:model{m}:log   hash    activation number -> JSON: version, sha256, who/when activated,
                             when superseded; '#' -> the last number given
  <p>:model{m}:yaml  hash    model version -> its YAML, as activated
  <p>:reeval         hash    the re-evaluation pass after a model change (reeval.py): activation,
                             instant, scan cursor, leads done
  <p>:sweep-lock     string  one sweeper at a time (worker.py)
  <p>:shadow         a key space of its own for the shadow model (shadow.py): written by the
                     workers' shadow, never read by the API, never switched to by a rescore
  <p>:write-probe    string  written by a worker Redis refused writes to, to see when it takes them
                             again (10 s expiry)

In a space `<s>`:

  <s>:l{<lead>}:v   string  the lead's state: scores, stage, clocks (msgpack; layout.py names its
                            fields), or the tombstone of an erased lead (lua/erase.lua)
  <s>:l{<lead>}:d   zset    event hashes applied within the dedup window (score: arrival ms)
  <s>:l{<lead>}:x   string  transitions of recent events, re-emitted when a message is replayed
                            (msgpack; written only by events that cause one; expires after the
                            dedup window)
  <s>:l{<lead>}:p   string  the fit-relevant traits (JSON; identified leads only)
  <s>:l{<lead>}:o   string  demotions the sweep decided and not yet acknowledged as published
  <s>:l{<lead>}:n   set     anonymous ids linked (or being linked) to the lead, so that erasing
                            it can remove their links (expires with the links: alias ttl)
  <s>:l{<lead>}:h   list    the lead's activity log, newest first: its scored events and moves,
                            capped (LEADPULSE_ACTIVITY_MAX), living like the state (lua/activity.lua)
  <s>:a{<anon>}:s   list    an anonymous visitor's scored events until it is linked to a lead
  <s>:a{<anon>}:d   zset    the visitor's dedup set
  <s>:a{<anon>}:a   string  the lead the visitor was linked to
  <s>:rules         hash    rule id -> code (lead states store codes; lua/rules.lua). Never delete
                            it alone: the states would lose their meaning
  <s>:due           zset    lead -> when decay alone takes it below its stage's floor
  <s>:top           zset    staged leads ranked by score (GET /leads/top)

The `l`/`a` letter keeps a lead and a visitor with the same id apart. The state was a hash
under `:s` before it was packed into one string; the new suffix means a hash left from then is
never read as a packed state (it is not migrated: rescore from retention, docs/operations.md).

Ids are free text, and Redis Cluster hashes only what lies between the first `{` and the next
`}` of a key: a lead id starting with `}` would make that tag empty, so the whole key (suffix
included) would be hashed and one lead's keys would land in different slots. An id holding a
`{` or `}` is therefore put in the tag encoded (unpadded base64url, which has no braces) under
the upper-case letter: `<s>:L{<b64>}:v`, `<s>:A{<b64>}:s`. Ids without braces keep their keys
as they are (no migration); `L`/`A` keys hold only encoded ids, so the two spaces never meet.

On Redis Cluster a script may only touch keys of one slot, so the two indexes are sharded
by slot: `<s>:due{<t>}` and `<s>:top{<t>}`, where `<t>` is a short tag hashing to the slot of
the leads it indexes. The sweep and GET /leads/top then read all 16384 shards (pipelined per
node): work that grows with the number of slots, never with the number of leads. Index members
are the ids themselves, never encoded.
"""

from __future__ import annotations

import base64
import functools
from typing import NamedTuple

from redis.crc import key_slot


class LeadKeys(NamedTuple):
    state: str
    dedup: str
    replay: str
    traits: str
    outbox: str
    visitors: str
    activity: str


class AnonKeys(NamedTuple):
    log: str
    dedup: str
    alias: str


SLOTS = 16384


@functools.cache
def slot_tags() -> tuple[str, ...]:
    """For every cluster slot, a short string that hashes to it (found once, in ~0.5 s)."""
    tags: dict[int, str] = {}
    n = 0
    while len(tags) < SLOTS:
        tag = format(n, "x")
        tags.setdefault(key_slot(tag.encode()), tag)
        n += 1
    return tuple(tags[slot] for slot in range(SLOTS))


def hash_tag(letter: str, ident: str) -> str:
    """`<letter>{<id>}`, or `<LETTER>{<id as unpadded base64url>}` when the id holds a brace."""
    if "{" in ident or "}" in ident:
        encoded = base64.urlsafe_b64encode(ident.encode()).rstrip(b"=").decode()
        return f"{letter.upper()}{{{encoded}}}"
    return f"{letter}{{{ident}}}"


class Keys:
    def __init__(self, prefix: str = "lp", cluster: bool = False, space: str | None = None) -> None:
        for name in (prefix, space or ""):
            if "{" in name or "}" in name:
                raise ValueError(f"a key prefix must not hold braces (they are hash tags): {name!r}")
        self.prefix = prefix
        #: where leads, visitors, the indexes and the rule codes live
        self.space = space or prefix
        self.cluster = cluster
        self.due = f"{self.space}:due"
        self.top = f"{self.space}:top"
        self.rules = f"{self.space}:rules"
        self.probe = f"{prefix}:write-probe"
        self.sweep_lock = f"{prefix}:sweep-lock"
        self.pointer = f"{prefix}:space"
        self.space_seq = f"{prefix}:space-seq"
        self.spaces = f"{prefix}:spaces"
        self.switch = f"{prefix}:switch"
        self.switch_acks = f"{prefix}:switch-acks"
        self.workers = f"{prefix}:workers"
        # one hash tag: activate.lua writes all three (one slot on a cluster)
        self.model_active = f"{prefix}:model{{m}}:active"
        self.model_log = f"{prefix}:model{{m}}:log"
        self.model_yaml = f"{prefix}:model{{m}}:yaml"
        self.reeval = f"{prefix}:reeval"

    def in_space(self, space: str) -> Keys:
        """These keys with leads in `space` (a prefix the pointer named, or the prefix itself)."""
        return Keys(self.prefix, self.cluster, space)

    @property
    def shadow_space(self) -> str:
        """The shadow model's key space (its keys never match the live spaces' patterns)."""
        return f"{self.prefix}:shadow"

    def new_space(self, number: int) -> str:
        return f"{self.prefix}:g{number}"

    def space_patterns(self) -> tuple[str, ...]:
        """SCAN patterns matching every key of this space and nothing else: another space's
        keys (`<p>:g<n>:…`) and the keys beside the spaces start differently."""
        s = self.space
        return (f"{s}:[lLaA]{{*", f"{s}:due", f"{s}:due{{*", f"{s}:top", f"{s}:top{{*", f"{s}:rules")

    def state_pattern(self) -> str:
        """SCAN pattern of every lead state of this space (erased leads' tombstones included)."""
        return f"{self.space}:[lL]{{*}}:v"

    def lead_of(self, key: str) -> str:
        """The id of one of this space's lead or visitor keys (the inverse of `lead`, `anon`)."""
        body = key[len(self.space) + 1:]
        tag = body[2 : body.rindex("}")]
        if body[0].isupper():
            return base64.urlsafe_b64decode(tag + "=" * (-len(tag) % 4)).decode()
        return tag

    def shard(self, lead_id: str) -> str:
        """The index shard of a lead: "" on a single Redis, its slot's tag on a cluster."""
        if not self.cluster:
            return ""
        return slot_tags()[key_slot(self.lead(lead_id).state.encode())]

    def shards(self) -> tuple[str, ...]:
        return slot_tags() if self.cluster else ("",)

    def indexes(self, shard: str) -> tuple[str, str]:
        """(due index, top index) of a shard."""
        if not shard:
            return self.due, self.top
        return f"{self.due}{{{shard}}}", f"{self.top}{{{shard}}}"

    def lead(self, lead_id: str) -> LeadKeys:
        base = f"{self.space}:{hash_tag('l', lead_id)}"
        return LeadKeys(base + ":v", base + ":d", base + ":x", base + ":p", base + ":o", base + ":n", base + ":h")

    def anon(self, anonymous_id: str) -> AnonKeys:
        base = f"{self.space}:{hash_tag('a', anonymous_id)}"
        return AnonKeys(base + ":s", base + ":d", base + ":a")
