"""rawpipe: the worker's pipelines packed by hiredis on a real Redis — the same bytes as redis-py,
replies in order with a refused command's error in its place, and a connection that stays usable."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import DataError, NoScriptError, ResponseError

from leadpulse import rawpipe, scripts
from leadpulse.dev.embedded import RedisServer


@pytest.mark.parametrize("command", [
    ("EVALSHA", "a" * 40, 2, "lead:{x}:state", "lead:{x}:dedup", b"\x00\x81\xff", 1_700_000_000_000, "é😀", 0.1),
    ("GET", "k"), ("SET", "k", 1e300), ("SET", "k", -0.0), ("SET", "k", 1 / 3), ("SET", "k", -(2**62)),
    ("EVALSHA", "b" * 40, 0, *(b"x" * n for n in (0, 1, 7000, 70_000))),  # past redis-py's chunk size
])
def test_packs_the_bytes_redis_py_sends(command: tuple[object, ...]) -> None:
    assert rawpipe.pack([command, command]) == b"".join(Connection().pack_commands([command, command]))


@pytest.mark.parametrize("bad", [True, None, {"a": 1}, [1]])
def test_an_argument_redis_py_cannot_encode_is_a_data_error(bad: object) -> None:
    with pytest.raises(DataError):
        rawpipe.pack([("SET", "k", bad)])


async def test_replies_in_order_with_errors_in_their_place(redis: Redis) -> None:
    assert rawpipe.raw_capable(redis)
    replies = await rawpipe.execute(redis, [
        ("SET", "a", "1"), ("LPUSH", "a", "x"), ("EVALSHA", "0" * 40, 0), ("GET", "a"), ("EXISTS", "a"), ("EXISTS", "zz"),
    ])
    assert replies[0] is True or replies[0] == b"OK"
    assert type(replies[1]) is ResponseError and "WRONGTYPE" in str(replies[1])
    assert isinstance(replies[2], NoScriptError)
    assert replies[3:] == [b"1", 1, 0]
    assert await redis.get("a") == b"1"  # the connection went back to the pool in step
    # checked: the first error reply raised, for a caller that cannot use the rest
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        rawpipe.checked(replies)
    assert rawpipe.checked(replies[3:]) == [b"1", 1, 0]


@pytest.mark.parametrize("protocol", [2, 3])
async def test_replies_are_shaped_as_redis_pys_own_pipeline_shapes_them(redis_server: RedisServer, protocol: int) -> None:
    # RESP2 answers HGETALL with a flat list, which redis-py's callbacks make a dict (handover.py
    # reads the switch hash this way, whichever protocol the client speaks)
    client = Redis.from_url(redis_server.url, protocol=protocol)
    try:
        await client.hset("h", mapping={"f": "v"})
        commands = [("HGETALL", "h"), ("HGETALL", "none"), ("PEXPIRE", "h", 10_000), ("EXISTS", "h")]
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        assert rawpipe.raw_capable(client)
        assert await rawpipe.execute(client, commands) == await pipe.execute() == [{b"f": b"v"}, {}, True, 1]
    finally:
        await client.flushdb()
        await client.aclose()


async def test_scripts_reload_after_redis_forgot_them(redis: Redis) -> None:
    runner = scripts.Scripts(redis)
    await redis.script_flush()
    assert await runner.pipelined([(scripts.RETIRE, ["anon:{v}:log", "anon:{v}:dedup", "anon:{v}:alias"], [])] * 3) == [0] * 3
    assert runner.reloads == 1


async def test_a_cancelled_exchange_leaves_no_reply_for_the_next_command(redis_server: RedisServer) -> None:
    client = Redis.from_url(redis_server.url, max_connections=1)
    try:
        await client.set("k", "v")
        task = asyncio.ensure_future(rawpipe.execute(client, [("BLPOP", "nothing", 1)]))
        for _ in range(10):  # let it send (or not yet): either way no reply may be left behind
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await rawpipe.execute(client, [("GET", "k")]) == [b"v"]
    finally:
        await client.aclose()


async def test_a_client_it_cannot_pack_for_gets_redis_pys_pipeline(redis_server: RedisServer) -> None:
    client = Redis.from_url(redis_server.url, encoding="latin-1")
    try:
        assert not rawpipe.raw_capable(client)
        replies = await rawpipe.execute(client, [("SET", "k", "é"), ("GET", "k"), ("LPUSH", "k", "x")])
        assert replies[1] == "é".encode("latin-1") and isinstance(replies[2], ResponseError)
    finally:
        await client.aclose()
