"""The Lua scripts, read from lua/*.lua once, registered by SHA, reloaded on NOSCRIPT."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib.resources import files
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

_LIB = "lib.lua"
#: how many times the scripts were found missing (Redis restarted or failed over): LeadStore
#: re-reads the rule codes when this moves
generation = 0
_USES_LIB = {"apply.lua", "sweep.lua", "ack.lua", "read.lua"}


class Script:
    def __init__(self, name: str) -> None:
        folder = files("leadpulse").joinpath("lua")
        body = folder.joinpath(name).read_text(encoding="utf-8")
        if name in _USES_LIB:
            body = folder.joinpath(_LIB).read_text(encoding="utf-8") + "\n" + body
        self.name = name
        self.source = body
        self.sha = hashlib.sha1(body.encode()).hexdigest()

    async def __call__(self, redis: Redis, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            # The script cache is empty after a restart or failover: load and run once more.
            global generation
            generation += 1
            await redis.script_load(self.source)
            return await redis.evalsha(self.sha, len(keys), *keys, *args)


APPLY = Script("apply.lua")
SWEEP = Script("sweep.lua")
ACK = Script("ack.lua")
READ = Script("read.lua")
ANON = Script("anon.lua")
LINK = Script("link.lua")
RETIRE = Script("retire.lua")
RULES = Script("rules.lua")
ERASE = Script("erase.lua")
UNLINK = Script("unlink.lua")
ALL = (APPLY, SWEEP, ACK, READ, ANON, LINK, RETIRE, RULES, ERASE, UNLINK)


async def load_all(redis: Redis) -> None:
    for script in ALL:
        await redis.script_load(script.source)


async def pipelined(redis: Redis, calls: Sequence[tuple[Script, Sequence[str], Sequence[Any]]]) -> list[Any]:
    """Run many script calls in one round trip; reload and retry the ones that hit NOSCRIPT."""
    if not calls:
        return []
    pipe = redis.pipeline(transaction=False)
    for script, keys, args in calls:
        # execute_command, not pipe.evalsha: redis-py's cluster pipeline blocks the method (a
        # node might lack the script), and our NOSCRIPT handling below covers exactly that.
        pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
    results: list[Any] = await pipe.execute(raise_on_error=False)
    missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
    if missing:
        global generation
        generation += 1
        await load_all(redis)
        retry = redis.pipeline(transaction=False)
        for i in missing:
            script, keys, args = calls[i]
            retry.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        for i, r in zip(missing, await retry.execute(raise_on_error=False)):
            results[i] = r
    for r in results:
        if isinstance(r, Exception):
            raise r
    return results
