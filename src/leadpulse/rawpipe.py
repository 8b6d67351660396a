"""Many Redis commands in one round trip, packed in C: the worker's pipelines (apply.lua calls,
the prefetch of aliases and traits).

redis-py's pipeline packs every argument in Python (an encode call, a length, a join of the
growing buffer each: ~1 µs per apply.lua call's lead) and queues, then parses, each command
through several layers. Here each command is packed by hiredis (`hiredis.pack_command`, the
same bytes: str as UTF-8, int and float as their repr), sent on one pooled connection, and its
replies read in order. Redis-py's connection still does the rest: connecting, health checks,
its retry policy on connection errors (the whole exchange again, as its pipeline does),
parsing the replies (an error reply becomes its ResponseError, NoScriptError included), and
shaping them with the client's response callbacks, as its pipeline would (HGETALL a dict under
RESP2 too, PEXPIRE a bool).

Only for a plain `Redis` client speaking UTF-8 with hiredis present; any other client (a
cluster, which routes by key) gets redis-py's own pipeline. Either way the replies come back in
command order, shaped alike, a refused command's error in its place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import DataError, ResponseError

try:
    from hiredis import pack_command as _pack_command
except ImportError:  # pragma: no cover - hiredis is a dependency; without it redis-py's path
    _pack_command = None

#: a command and its arguments: str, bytes, int or float each
Command = tuple[Any, ...]


def raw_capable(redis: Any) -> bool:
    """Whether `redis` takes the packed path: a plain client on a UTF-8 pool (no cluster)."""
    if _pack_command is None or type(redis) is not Redis:
        return False
    kwargs = redis.connection_pool.connection_kwargs
    return kwargs.get("encoding", "utf-8").lower().replace("-", "") == "utf8" and kwargs.get("encoding_errors", "strict") == "strict"


def pack(commands: Sequence[Command]) -> bytes:
    """The RESP bytes of `commands`, as redis-py would send them. An argument of another type
    (bool, None, a dict) raises DataError, as redis-py's encoder does: a call that can never be
    sent (redisconn.unavailable: the batch is split, not retried)."""
    try:
        return b"".join([_pack_command(c) for c in commands])  # type: ignore[misc]
    except TypeError as exc:
        raise DataError(f"Invalid input: {exc}") from exc


def checked(replies: list[Any]) -> list[Any]:
    """`replies` as they are, unless one is an error reply: then the first error is raised."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


async def execute(redis: Any, commands: Sequence[Command]) -> list[Any]:
    """Run `commands` in one round trip; each reply in order, an error reply as its exception."""
    if not commands:
        return []
    if not raw_capable(redis):
        pipe = redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies
    payload = pack(commands)
    pool = redis.connection_pool
    conn: Connection = await pool.get_connection()
    try:
        replies = await conn.retry.call_with_retry(lambda: _exchange(conn, payload, len(commands)),
                                                   lambda error: conn.disconnect())
    except BaseException:
        # A reply left unread (cancelled, timed out) would be the next user's: drop the socket.
        await conn.disconnect(nowait=True)
        raise
    finally:
        await pool.release(conn)
    callbacks = redis.response_callbacks
    return [reply if isinstance(reply, Exception) or (shape := callbacks.get(command[0])) is None else shape(reply)
            for reply, command in zip(replies, commands)]


async def _exchange(conn: Connection, payload: bytes, n: int) -> list[Any]:
    await conn.send_packed_command(payload)
    replies: list[Any] = []
    for _ in range(n):
        try:
            replies.append(await conn.read_response())
        except ResponseError as exc:  # a refused command: its error in its place, the rest read
            replies.append(exc)
    return replies
