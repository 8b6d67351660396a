"""Switching every process to a rebuilt key space, losing and doubling nothing.

`leadpulse rescore` (admin.py) rebuilds lead state from the retained events into a fresh key
space (keys.py) while the workers go on scoring into the current one and serving reads from
it. The hand-over, in order:

1. `announce`: the switch record `<p>:switch` names the new space (phase `building`), leased:
   it expires unless the rescore renews it, so a rescore that dies holds nobody. From here on
   an erasure erases in both spaces (erasure.erase).
2. The rescore copies the tombstones and rebuilds up to the consumer group's committed
   offsets, round after round as they move: only what the workers have applied (and published)
   in the old space, never more, so nothing it rebuilds is applied again by a worker later.
3. `pause`: each worker (`Gate`, between batches and while idle) waits until every batch it
   applied is published and committed, stops sweeping, acknowledges `held`, and applies
   nothing until the switch moves on. Workers are known by their heartbeats (`<p>:workers`);
   one that stopped beating (15 s) is not waited for (its partitions go to the others).
4. With everyone held, the committed offsets stand still: the rescore applies the last records
   up to them, and `flip`s the pointer `<p>:space` to the new space (phase `switched`).
5. Each worker moves its store to the new space, re-reads the tail of the handoff topic (the
   sweep may decide there a demotion another worker already published: its id is then known),
   acknowledges `switched` and applies the batch it held — the first after the committed
   offsets — into the new space. Reads were served from the old space until then.
6. With every worker switched, the old space is deleted and the record removed.

A worker that starts during a switch holds or follows like the others: it heartbeats before it
consumes. If the rescore fails before the flip, it deletes the switch record (the workers go on
in the old space) and the new space; after the flip the new space is the truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from . import rawpipe
from .errors import StateError
from .keys import Keys

log = logging.getLogger("leadpulse.handover")

#: the switch record lives this long unless renewed (the rescore renews it every third of it)
LEASE_MS = 30_000
#: a worker heartbeats every HEARTBEAT_S; one silent for STALE_MS is not waited for
HEARTBEAT_S = 2.0
STALE_MS = 15_000
#: how often a held worker looks whether the switch moved on
POLL_S = 0.05


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Control:
    """What a worker reads before each batch, in one round trip."""

    #: the current key space (the pointer; the prefix itself when unset)
    space: str
    switch_id: str | None
    phase: str | None
    to: str | None
    #: the active model activation (models.py); None: none recorded
    model: int | None


async def read_control(redis: Redis, keys: Keys) -> Control:
    # Packed by hiredis (rawpipe): the worker reads this before every batch, and redis-py's
    # pipeline cost more Python than the three commands are worth.
    pointer, switch, active = rawpipe.checked(
        await rawpipe.execute(redis, [("GET", keys.pointer), ("HGETALL", keys.switch), ("GET", keys.model_active)]))
    fields = {_text(k): _text(v) for k, v in (switch or {}).items()}
    return Control(
        space=_text(pointer) or keys.prefix, switch_id=fields.get("id"), phase=fields.get("phase"),
        to=fields.get("to"), model=int(active) if active is not None else None,
    )


class Aborted(StateError):
    """The switch record is gone (its lease ran out): the rescore must not flip."""


class Switch:
    """The rescore's side of the hand-over (steps 1, 3, 4, 6 above)."""

    def __init__(self, redis: Redis, keys: Keys, to: str) -> None:
        self.redis = redis
        self.keys = keys
        self.to = to
        self.id = uuid.uuid4().hex

    async def announce(self) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.sadd(self.keys.spaces, self.to)
        pipe.delete(self.keys.switch, self.keys.switch_acks)
        pipe.hset(self.keys.switch, mapping={"id": self.id, "to": self.to, "phase": "building"})
        pipe.pexpire(self.keys.switch, LEASE_MS)
        await pipe.execute()

    async def renew(self) -> None:
        if _text(await self.redis.hget(self.keys.switch, "id")) != self.id:
            raise Aborted("the switch record expired: another rescore, or this one stalled past its lease")
        await self.redis.pexpire(self.keys.switch, LEASE_MS)

    @contextlib.asynccontextmanager
    async def leased(self) -> AsyncIterator[None]:
        """Renew the lease in the background while the body runs."""
        async def renew() -> None:
            while True:
                await asyncio.sleep(LEASE_MS / 3000)
                try:
                    await self.renew()
                except Aborted:
                    log.error("rescore: the switch record expired")
                    return
                except Exception as exc:  # noqa: BLE001 - retried at the next renewal
                    log.warning("rescore: could not renew the switch lease: %s", exc)

        task = asyncio.ensure_future(renew())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def pause(self) -> None:
        await self.renew()
        await self.redis.hset(self.keys.switch, "phase", "pause")

    async def _acked(self, word: str) -> tuple[set[str], set[str]]:
        """(live workers, those that acknowledged `word`)."""
        live = {_text(m) for m in await self.redis.zrangebyscore(self.keys.workers, now_ms() - STALE_MS, "+inf")}
        acks = {_text(k): _text(v) for k, v in (await self.redis.hgetall(self.keys.switch_acks)).items()}
        return {w for w in live if w}, {w for w, v in acks.items() if w and v == f"{word}:{self.id}"}

    async def wait_for(self, word: str, timeout: float) -> int:
        """Wait until every live worker acknowledged `word` (held, switched); returns how many."""
        deadline = time.monotonic() + timeout
        while True:
            await self.renew()
            live, acked = await self._acked(word)
            if live <= acked:
                return len(live)
            if time.monotonic() > deadline:
                raise StateError(f"{len(live - acked)} worker(s) did not acknowledge '{word}' within {timeout:g} s: "
                                 f"{', '.join(sorted(live - acked))}")
            await asyncio.sleep(POLL_S)

    async def flip(self, old: str) -> None:
        """Point every process at the new space. The old one is marked for deletion in the same
        transaction, so a rescore that dies after the flip leaves nothing to guess."""
        await self.renew()
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self.keys.pointer, self.to)
        pipe.hset(self.keys.switch, "phase", "switched")
        pipe.srem(self.keys.spaces, self.to)
        if old != self.to:
            pipe.sadd(self.keys.spaces, old)
        await pipe.execute()

    async def finish(self) -> None:
        await self.redis.delete(self.keys.switch, self.keys.switch_acks)


class Gate:
    """The worker's side: called before each batch and while idle (worker.py)."""

    def __init__(self, redis: Redis, keys: Keys, worker_id: str,
                 on_switch: Callable[[str], Awaitable[None]], on_model: Callable[[int], Awaitable[None]]) -> None:
        self.redis = redis
        self.keys = keys
        self.worker_id = worker_id
        self.on_switch = on_switch
        self.on_model = on_model
        self.space: str | None = None
        self.model: int | None = None
        #: held while the worker holds: the sweep takes it too, so it never runs meanwhile
        self.quiet = asyncio.Lock()
        self._held: str | None = None
        self._switched: str | None = None

    async def heartbeat(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(self.keys.workers, {self.worker_id: now_ms()})
        pipe.zremrangebyscore(self.keys.workers, "-inf", now_ms() - 20 * STALE_MS)
        await pipe.execute()

    async def leave(self) -> None:
        await self.redis.zrem(self.keys.workers, self.worker_id)

    async def check(self, drained: Callable[[], Awaitable[None]]) -> None:
        """Follow the pointer and the active model; hold through a switch's pause."""
        control = await read_control(self.redis, self.keys)
        await self._follow(control)
        if control.phase != "pause" or control.switch_id is None or control.switch_id == self._held:
            return
        sid = control.switch_id
        await drained()  # everything applied in the old space is published and committed
        async with self.quiet:
            await self.redis.hset(self.keys.switch_acks, self.worker_id, f"held:{sid}")
            self._held = sid
            log.info("holding for the switch to %s", control.to)
            while True:
                await asyncio.sleep(POLL_S)
                control = await read_control(self.redis, self.keys)
                if control.space != self.space or control.switch_id != sid or control.phase != "pause":
                    break
            await self._follow(control)

    async def _follow(self, control: Control) -> None:
        if control.space != self.space:
            if self.space is not None:
                log.info("switching to the key space %s", control.space)
            await self.on_switch(control.space)
            self.space = control.space
        if control.phase == "switched" and control.switch_id and control.switch_id != self._switched \
                and control.to == self.space:
            await self.redis.hset(self.keys.switch_acks, self.worker_id, f"switched:{control.switch_id}")
            self._switched = control.switch_id
        if control.model is not None and control.model != self.model:
            await self.on_model(control.model)
            self.model = control.model
