"""Every Redis key LeadPulse writes, in one place.

All keys of one lead share the hash tag `{<lead_id>}`, so a lead's state lives in one hash slot
and its Lua scripts work on Redis Cluster. The prefix separates deployments sharing a Redis.

  <p>:l{<lead>}:s   hash    the lead's state (fields documented in lua/lib.lua)
  <p>:l{<lead>}:d   zset    event hashes applied within the dedup window (score: arrival ms)
  <p>:a{<anon>}:s   list    an anonymous visitor's scored events until it is linked to a lead
  <p>:a{<anon>}:d   zset    the visitor's dedup set
  <p>:a{<anon>}:a   string  the lead the visitor was linked to
  <p>:due           zset    lead -> when decay alone takes it below its stage's floor
  <p>:top           zset    staged leads ranked by score (GET /leads/top)

The `l`/`a` letter keeps a lead and a visitor with the same id apart.
"""

from __future__ import annotations

from typing import NamedTuple


class LeadKeys(NamedTuple):
    state: str
    dedup: str


class AnonKeys(NamedTuple):
    log: str
    dedup: str
    alias: str


class Keys:
    def __init__(self, prefix: str = "lp") -> None:
        self.prefix = prefix
        self.due = f"{prefix}:due"
        self.top = f"{prefix}:top"

    def lead(self, lead_id: str) -> LeadKeys:
        base = f"{self.prefix}:l{{{lead_id}}}"
        return LeadKeys(base + ":s", base + ":d")

    def anon(self, anonymous_id: str) -> AnonKeys:
        base = f"{self.prefix}:a{{{anonymous_id}}}"
        return AnonKeys(base + ":s", base + ":d", base + ":a")
