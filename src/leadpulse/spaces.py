"""Whole key spaces (keys.py): copying what a rebuild cannot derive, deleting a space.

Used by `leadpulse rescore` (admin.py) around the hand-over (handover.py). Each walks a space
with SCAN (work in proportion to the keys of the Redis, pipelined a thousand at a time); none
uses KEYS, and every command names its own key, so they work on Redis Cluster too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from redis.asyncio import Redis

from . import layout, scripts
from .keys import Keys

CHUNK = 1000


async def _scan(redis: Redis, patterns: Iterable[str]) -> AsyncIterator[list[str]]:
    chunk: list[str] = []
    for pattern in patterns:
        async for key in redis.scan_iter(match=pattern, count=CHUNK):
            chunk.append(key.decode() if isinstance(key, bytes) else key)
            if len(chunk) >= CHUNK:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


async def copy_rules(redis: Redis, old: Keys, new: Keys) -> None:
    """The new space starts with the old one's rule codes: a rule keeps its code (rules.lua)."""
    table = await redis.hgetall(old.rules)
    if table:
        await redis.hset(new.rules, mapping=table)


async def copy_tombstones(redis: Redis, old: Keys, new: Keys) -> int:
    """Every erased lead's tombstone, with the time it has left, so that the rebuild refuses the
    lead's retained events as the old space did."""
    copied = 0
    async for chunk in _scan(redis, [old.state_pattern()]):
        pipe = redis.pipeline(transaction=False)
        for key in chunk:
            pipe.strlen(key)  # a tombstone is 2 bytes: only those are read
        short = [key for key, n in zip(chunk, await pipe.execute()) if n == len(layout.TOMBSTONE)]
        if not short:
            continue
        pipe = redis.pipeline(transaction=False)
        for key in short:
            pipe.get(key)
            pipe.pttl(key)
        replies = await pipe.execute()
        pipe = redis.pipeline(transaction=False)
        for key, value, ttl in zip(short, replies[::2], replies[1::2]):
            if value == layout.TOMBSTONE and ttl != -2:
                lead = old.lead_of(key)
                if ttl > 0:
                    pipe.set(new.lead(lead).state, value, px=ttl)
                else:
                    pipe.set(new.lead(lead).state, value)
                copied += 1
        await pipe.execute()
    return copied


def _entity(old: Keys, key: str) -> tuple[str, str] | None:
    """(letter l|a, id) of a lead or visitor key of `old`; None for the indexes and rules."""
    body = key[len(old.space) + 1:]
    if body[:1] in ("l", "L"):
        return "l", old.lead_of(key)
    if body[:1] in ("a", "A"):
        return "a", old.lead_of(key)
    return None


def _keys_of(keys: Keys, letter: str, ident: str) -> tuple[str, ...]:
    return tuple(keys.lead(ident)) if letter == "l" else tuple(keys.anon(ident))


async def unretained(redis: Redis, old: Keys, new: Keys, among: Iterable[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """Leads and visitors of `old` of which `new` holds no key: none of their events was
    rebuilt (all left the topics' retention). `among`: look only at these."""
    if among is None:
        seen: set[tuple[str, str]] = set()
        async for chunk in _scan(redis, [f"{old.space}:[lLaA]{{*"]):
            seen.update(e for e in (_entity(old, k) for k in chunk) if e is not None)
        candidates = sorted(seen)
    else:
        candidates = sorted(set(among))
    out: list[tuple[str, str]] = []
    for start in range(0, len(candidates), CHUNK):
        part = candidates[start : start + CHUNK]
        pipe = redis.pipeline(transaction=False)
        for letter, ident in part:
            pipe.exists(*_keys_of(new, letter, ident))
        out.extend(e for e, n in zip(part, await pipe.execute()) if n == 0)
    return out


async def carry_over(redis: Redis, old: Keys, new: Keys, entities: list[tuple[str, str]]) -> int:
    """Copy these leads and visitors from `old` to `new` as they are (carry.lua: every key with
    the time it has left, a lead's index entries); a carried visitor's link is named in its
    lead's set of visitors, so erasing the lead finds it. Returns the keys copied."""
    runner = scripts.Scripts(redis)
    copied = 0
    for start in range(0, len(entities), CHUNK):
        part = entities[start : start + CHUNK]
        calls = []
        for letter, ident in part:
            src, dst = _keys_of(old, letter, ident), _keys_of(new, letter, ident)
            indexes = [*old.indexes(old.shard(ident)), *new.indexes(new.shard(ident))] if letter == "l" else []
            calls.append((scripts.CARRY, [*src, *dst, *indexes], [len(src), ident if letter == "l" else ""]))
        pipe = redis.pipeline(transaction=False)
        for (letter, ident), (n, lead) in zip(part, await runner.pipelined(calls)):
            copied += n
            if lead:
                pipe.sadd(new.lead(lead.decode() if isinstance(lead, bytes) else lead).visitors, ident)
        await pipe.execute()
    return copied


async def delete(redis: Redis, keys: Keys) -> int:
    """Delete every key of the space of `keys` (UNLINK: freed in the background)."""
    deleted = 0
    async for chunk in _scan(redis, keys.space_patterns()):
        pipe = redis.pipeline(transaction=False)
        for key in chunk:
            pipe.unlink(key)
        deleted += sum(await pipe.execute())
    return deleted


async def sweep_leftovers(redis: Redis, root: Keys, keep: set[str]) -> list[str]:
    """Delete the spaces a rescore left behind (one that failed, or died before or after its
    switch), except those in `keep`. Returns the spaces deleted."""
    gone = []
    for raw in await redis.smembers(root.spaces):
        space = raw.decode() if isinstance(raw, bytes) else raw
        if space in keep:
            continue
        await delete(redis, root.in_space(space))
        await redis.srem(root.spaces, space)
        gone.append(space)
    return gone

