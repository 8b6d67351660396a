"""What the worker samples of Redis itself for its metrics: memory used against `maxmemory`.

At `maxmemory` (with `noeviction`, docs/operations.md) Redis refuses every write and scoring
stops; what grows towards it is mostly the dedup sets and replay logs (one entry per event
within the model's dedup window) and anonymous visitors. One INFO per primary, on a timer,
whatever the event rate.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from redis.asyncio import Redis, RedisCluster


class Memory(NamedTuple):
    used: int  # INFO memory used_memory: bytes allocated for data and overheads
    limit: int  # maxmemory; 0 when none is set


async def memory(redis: Redis | RedisCluster) -> dict[str, Memory]:
    """Memory of every primary, by node ("host:port"; a single Redis is the one node)."""
    if isinstance(redis, RedisCluster):
        primaries = redis.get_primaries()
        replies: Any = await redis.info("memory", target_nodes=primaries)
        if "used_memory" in replies:  # one primary: redis-py may answer its INFO unwrapped
            replies = {primaries[0].name: replies}
    else:
        options = redis.connection_pool.connection_kwargs
        node = options.get("path") or f"{options.get('host', 'localhost')}:{options.get('port', 6379)}"
        replies = {node: await redis.info("memory")}
    return {node: Memory(int(info["used_memory"]), int(info["maxmemory"])) for node, info in replies.items()}
