"""A Redis client for a single Redis or a Cluster, and what its errors mean: "not now" (retry the
batch) or "never" (split it: isolate.py)."""

from __future__ import annotations

from typing import Any

from redis import exceptions as rx
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from .errors import LeadPulseError, RedisRefused, StateError


#: Redis cannot serve for now (a failover, resharding, a dataset loading, a long script, memory,
#: persistence or credentials trouble): the same batch is retried. Every other error reply (a Lua
#: runtime error, WRONGTYPE, CROSSSLOT) would recur on a retry: the batch is split instead.
_UNAVAILABLE = (rx.ConnectionError, rx.TimeoutError, rx.OutOfMemoryError, rx.ReadOnlyError, rx.NoPermissionError,
                rx.ClusterError, rx.AskError, rx.TryAgainError, rx.NoScriptError)
_UNAVAILABLE_CODES = frozenset({"BUSY", "LOADING", "TRYAGAIN", "CLUSTERDOWN", "MOVED", "ASK", "READONLY", "MASTERDOWN",
                                "NOREPLICAS", "MISCONF", "OOM", "NOAUTH", "WRONGPASS", "NOPERM", "UNBLOCKED"})


def unavailable(exc: BaseException) -> bool:
    """True when a Redis error says "not now" (retry) rather than "never" (split the batch)."""
    if isinstance(exc, RedisClusterException):  # the client's own: only a cross-slot call is for good
        return not isinstance(exc, rx.CrossSlotTransactionError) and "same key slot" not in str(exc)
    if isinstance(exc, _UNAVAILABLE):
        return True
    if isinstance(exc, rx.ResponseError):
        # A script's failing redis.call keeps the error's code in front (Redis 7) or after "-" (6).
        text = str(exc)
        return text.split(" ", 1)[0] in _UNAVAILABLE_CODES or any(f" -{code} " in text for code in _UNAVAILABLE_CODES)
    return not isinstance(exc, rx.DataError)  # DataError: an argument the client cannot encode


def failure(exc: RedisError | RedisClusterException) -> LeadPulseError:
    return StateError(f"redis: {exc}") if unavailable(exc) else RedisRefused(f"redis: {exc}")


def connect(url: str, cluster: bool = False, **options: Any) -> Redis:
    """A client for a single Redis, or for a Redis Cluster (then the indexes are sharded)."""
    if cluster:
        return RedisCluster.from_url(url, **options)  # type: ignore[return-value]
    return Redis.from_url(url, **options)


