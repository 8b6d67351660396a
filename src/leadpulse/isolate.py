"""Find the records a batch fails on, so that one poison record cannot hold up a partition.

A batch is applied whole first: the normal case costs nothing extra. Only when it fails for a
reason a retry would not change is it split in halves, each half applied on its own, and so on
down to the single records that still fail. Halves run in batch order, so a lead's events are
applied in the order they arrived, and re-applying a part that had partly gone through before
is a replay, which changes nothing (pipeline.py). Failures that say "not now" (Redis or the
network unavailable) are not split: they propagate, and the caller retries the whole batch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

R = TypeVar("R")


def retriable(exc: BaseException) -> bool:
    """A failure that may pass by itself (errors.StateError, a socket error): retry, never split."""
    return bool(getattr(exc, "retriable", False)) or isinstance(exc, OSError)


@dataclass(slots=True)
class Split(Generic[R]):
    #: (start, end, result) of the parts that went through, in batch order; with the culprits,
    #: they cover every index once
    parts: list[tuple[int, int, R]] = field(default_factory=list)
    #: index -> why that record alone failed
    culprits: dict[int, Exception] = field(default_factory=dict)


async def bisect(count: int, run: Callable[[int, int], Awaitable[R]], failure: Exception,
                 transient: Callable[[BaseException], bool] = retriable) -> Split[R]:
    """`run(0, count)` failed with `failure`: run the halves of [0, count), recursively, until
    every part went through or is one record that fails alone. `run(start, end)` applies the
    records start..end-1. Raises the first transient failure (the caller retries the batch)."""
    split: Split[R] = Split()

    async def attempt(start: int, end: int, known: Exception | None) -> None:
        if known is None:
            try:
                split.parts.append((start, end, await run(start, end)))
                return
            except Exception as exc:
                if transient(exc):
                    raise
                known = exc
        if end - start == 1:
            split.culprits[start] = known
            return
        middle = (start + end) // 2
        await attempt(start, middle, None)
        await attempt(middle, end, None)

    if count:
        await attempt(0, count, failure)
    return split
