"""Erasing a lead (right to erasure): its data and its visitors' links go, a tombstone stays.

erase.lua replaces the lead's state with a tombstone that apply.lua honours (its events are
refused for LEADPULSE_TOMBSTONE_TTL: replays, a rescore from the topics, a visitor linked to it
again) and deletes the rest of the lead. The visitors' links live in their own slots, so they
are removed here, one unlink.lua call each: every visitor ever linked to the lead is in its set
`…:n`, written before the link itself (LeadStore._link). docs/operations.md, Erasure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from . import layout, rawpipe, scripts
from .errors import StateError

if TYPE_CHECKING:
    from .state import LeadStore


async def register(store: LeadStore, links: list[tuple[str, str]]) -> None:
    """Name each (visitor, lead) in the lead's set of visitors, before link.lua links them, in a
    round trip of its own. The set lives as long as the links it names (alias ttl)."""
    ttl = store.retention.alias_ttl_ms
    commands: list[rawpipe.Command] = []
    for anon_id, lead in links:
        key = store.keys.lead(lead).visitors
        commands.append(("SADD", key, anon_id))
        if ttl > 0:
            commands.append(("PEXPIRE", key, ttl))
    # on the hot path (every batch with an identify that links a visitor): packed in C
    rawpipe.checked(await rawpipe.execute(store.redis, commands))


async def erase(store: LeadStore, lead_id: str) -> bool:
    """Erase a lead: its state (replaced by the tombstone), dedup set, replay log, traits, outbox,
    index entries, and the links of its visitors with whatever they logged. True if it had a
    state. A lead never seen is tombstoned too: its events still on their way cannot create it.

    While a rescore builds a new key space (handover.py), the lead is erased there too. The
    order makes that race-free: the erasure here comes first, then the look at the switch; the
    rescore announces the switch first, then copies the tombstones it finds. Either the rescore
    finds this tombstone or this erasure finds the switch."""
    try:
        await store.ready()
        existed = await _erase_in(store, lead_id)
        target = await store.redis.hget(store.keys.switch, "to")
    except RedisError as exc:
        raise StateError(f"redis: {exc}") from exc
    space = target.decode() if isinstance(target, bytes) else target
    shadow = store.keys.in_space(store.keys.shadow_space)
    try:
        if space and space != store.keys.space:
            existed = await _erase_in(store.in_space(space), lead_id) or existed
        if await store.redis.exists(shadow.rules):  # a shadow model ran (shadow.py): erased there too
            await _erase_in(store.in_space(shadow.space), lead_id)
    except RedisError as exc:
        raise StateError(f"redis: {exc}") from exc
    return existed


async def _erase_in(store: LeadStore, lead_id: str) -> bool:
    keys, lead = store.keys, store.keys.lead(lead_id)
    try:
        existed = await store.scripts.run(
            scripts.ERASE, [*keys.indexes(keys.shard(lead_id)), lead.state, lead.dedup, lead.replay, lead.traits, lead.outbox,
                           lead.activity],
            [lead_id, store.retention.tombstone_ttl_ms, layout.TOMBSTONE],
        )
        await unlink(store, {lead_id}, {})
    except RedisError as exc:
        raise StateError(f"redis: {exc}") from exc
    return bool(existed)


async def unlink(store: LeadStore, leads: set[str], routed: Mapping[str, set[str]]) -> None:
    """Remove every link to these erased leads: of the visitors in their sets and of those
    `routed` to them by the batch at hand (unlink.lua removes a link only if it is to that lead).
    Safe to repeat: an erasure cut short is finished by the next one, or by the lead's next event."""
    ordered = sorted(leads)
    pipe = store.redis.pipeline(transaction=False)
    for lead in ordered:
        pipe.smembers(store.keys.lead(lead).visitors)
    found = await pipe.execute()
    calls = [(scripts.UNLINK, store.keys.anon(a), [lead]) for lead, members in zip(ordered, found)
             for a in sorted({m.decode() if isinstance(m, bytes) else m for m in members} | routed.get(lead, set()))]
    await store.scripts.pipelined(calls)
    pipe = store.redis.pipeline(transaction=False)
    for lead in ordered:
        pipe.delete(store.keys.lead(lead).visitors)
    await pipe.execute()
    store.forget_links(leads)
