"""The Lua scripts, read from lua/*.lua once, registered by SHA, reloaded on NOSCRIPT."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib.resources import files
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from . import rawpipe

_LIB = "lib.lua"
_USES_LIB = frozenset({"apply.lua", "sweep.lua", "ack.lua", "read.lua", "reeval.lua", "history.lua"})
#: the scripts that write the activity log (activity.lua, after lib.lua)
_WRITES_ACTIVITY = frozenset({"apply.lua", "sweep.lua"})


class Script:
    def __init__(self, name: str) -> None:
        folder = files("leadpulse").joinpath("lua")
        body = folder.joinpath(name).read_text(encoding="utf-8")
        if name in _WRITES_ACTIVITY:
            body = folder.joinpath("activity.lua").read_text(encoding="utf-8") + "\n" + body
        if name in _USES_LIB:
            body = folder.joinpath(_LIB).read_text(encoding="utf-8") + "\n" + body
        self.name = name
        self.source = body
        self.sha = hashlib.sha1(body.encode()).hexdigest()


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
ACTIVATE = Script("activate.lua")
REEVAL = Script("reeval.lua")
CARRY = Script("carry.lua")
HISTORY = Script("history.lua")
ALL = (APPLY, SWEEP, ACK, READ, ANON, LINK, RETIRE, RULES, ERASE, UNLINK, ACTIVATE, REEVAL, CARRY, HISTORY)


async def load_all(redis: Redis) -> None:
    for script in ALL:
        await redis.script_load(script.source)


class Scripts:
    """The scripts on one Redis client: calls by SHA, and what a lost script cache costs.

    Redis forgets its scripts when it restarts or fails over (NOSCRIPT): a call that finds its
    script missing loads it and runs once more. `reloads` counts those times; LeadStore, which
    owns this object, re-reads its rule codes when it moves (Redis may have lost its data too).
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.reloads = 0

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await self.redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            self.reloads += 1
            await self.redis.script_load(script.source)
            return await self.redis.evalsha(script.sha, len(keys), *keys, *args)

    async def pipelined(self, calls: Sequence[tuple[Script, Sequence[str], Sequence[Any]]],
                        raise_on_error: bool = True) -> list[Any]:
        """Run many script calls in one round trip; reload and retry the ones that hit NOSCRIPT.

        A call Redis refused raises its error, unless `raise_on_error` is false: then its error
        stands in its place among the replies, for a caller that can go on without that call
        (the sweep, where one lead's bad state must not hold back every other lead's demotion).
        """
        if not calls:
            return []
        # EVALSHA by name, not redis.evalsha: redis-py's cluster pipeline blocks the method (a
        # node might lack the script), and our NOSCRIPT handling below covers exactly that.
        def evalsha(these: Sequence[tuple[Any, Sequence[Any], Sequence[Any]]]) -> Any:
            return rawpipe.execute(self.redis, [("EVALSHA", s.sha, len(keys), *keys, *args) for s, keys, args in these])

        results = await evalsha(calls)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            self.reloads += 1
            await load_all(self.redis)
            for i, r in zip(missing, await evalsha([calls[i] for i in missing])):
                results[i] = r
        return rawpipe.checked(results) if raise_on_error else results
