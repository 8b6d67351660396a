"""Every Redis key LeadPulse writes, in one place.

All keys of one lead share one hash tag, so a lead's state lives in one hash slot and its Lua
scripts work on Redis Cluster. The prefix separates deployments sharing a Redis.

  <p>:l{<lead>}:v   string  the lead's state: scores, stage, clocks (msgpack; layout.py names its
                            fields), or the tombstone of an erased lead (lua/erase.lua)
  <p>:l{<lead>}:d   zset    event hashes applied within the dedup window (score: arrival ms)
  <p>:l{<lead>}:x   string  transitions of recent events, re-emitted when a message is replayed
                            (msgpack; written only by events that cause one; expires after the
                            dedup window)
  <p>:l{<lead>}:p   string  the fit-relevant traits (JSON; identified leads only)
  <p>:l{<lead>}:o   string  demotions the sweep decided and not yet acknowledged as published
  <p>:l{<lead>}:n   set     anonymous ids linked (or being linked) to the lead, so that erasing
                            it can remove their links (expires with the links: alias ttl)
  <p>:a{<anon>}:s   list    an anonymous visitor's scored events until it is linked to a lead
  <p>:a{<anon>}:d   zset    the visitor's dedup set
  <p>:a{<anon>}:a   string  the lead the visitor was linked to
  <p>:rules         hash    rule id -> code (lead states store codes; lua/rules.lua). Never delete
                            it alone: the states would lose their meaning
  <p>:due           zset    lead -> when decay alone takes it below its stage's floor
  <p>:top           zset    staged leads ranked by score (GET /leads/top)
  <p>:sweep-lock    string  one sweeper at a time (worker.py)
  <p>:write-probe   string  written by a worker Redis refused writes to, to see when it takes them
                            again (10 s expiry)

The `l`/`a` letter keeps a lead and a visitor with the same id apart. The state was a hash
under `:s` before it was packed into one string; the new suffix means a hash left from then is
never read as a packed state (it is not migrated: rescore from retention, docs/operations.md).

Ids are free text, and Redis Cluster hashes only what lies between the first `{` and the next
`}` of a key: a lead id starting with `}` would make that tag empty, so the whole key (suffix
included) would be hashed and one lead's keys would land in different slots. An id holding a
`{` or `}` is therefore put in the tag encoded (unpadded base64url, which has no braces) under
the upper-case letter: `<p>:L{<b64>}:v`, `<p>:A{<b64>}:s`. Ids without braces keep their keys
as they are (no migration); `L`/`A` keys hold only encoded ids, so the two spaces never meet.

On Redis Cluster a script may only touch keys of one slot, so the two indexes are sharded
by slot: `<p>:due{<t>}` and `<p>:top{<t>}`, where `<t>` is a short tag hashing to the slot of
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
    def __init__(self, prefix: str = "lp", cluster: bool = False) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"a key prefix must not hold braces (they are hash tags): {prefix!r}")
        self.prefix = prefix
        self.cluster = cluster
        self.due = f"{prefix}:due"
        self.top = f"{prefix}:top"
        self.rules = f"{prefix}:rules"
        self.probe = f"{prefix}:write-probe"

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
        base = f"{self.prefix}:{hash_tag('l', lead_id)}"
        return LeadKeys(base + ":v", base + ":d", base + ":x", base + ":p", base + ":o", base + ":n")

    def anon(self, anonymous_id: str) -> AnonKeys:
        base = f"{self.prefix}:{hash_tag('a', anonymous_id)}"
        return AnonKeys(base + ":s", base + ":d", base + ":a")
