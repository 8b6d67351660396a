"""Waiting out an outage: retries with backoff that stop when the process stops.

Every process retries what a broker or Redis outage interrupts (connecting, creating topics, a
batch's writes, a dead letter, a commit) until it works, instead of crash-looping under its
supervisor; each failure is handed to the process (log, metrics, readiness), and a stop ends the
wait at once. Hand-written rather than tenacity: that wake-up on the process's stop event and the
hand-off of each failure are the whole loop here, and would be a custom sleep and callbacks there.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class Stopped(Exception):
    """The process is stopping: the operation being retried is given up (and redone after a
    restart, since nothing past it was committed)."""


def backoff_delay(retry: int, initial: float, maximum: float, rng: random.Random | None = None) -> float:
    """The wait before retry number `retry` (1, 2, …): exponential, capped, with "equal jitter"
    (half fixed, half random), so retries spread out yet never come sooner than half the step."""
    ceiling = min(maximum, initial * 2.0 ** (retry - 1))
    jitter: float = (rng or random).uniform(0, ceiling / 2)
    return ceiling / 2 + jitter


#: told of each failure: (what was being done, the error, seconds until the next try)
OnError = Callable[[str, Exception, float], None]


class Retry:
    """`await retry(op, "what")` runs `op` until it returns, waiting `initial` seconds after the
    first failure, twice as long after each next one, at most `maximum`.

    Only `errors` are retried (an outage); anything else is a bug and propagates. `stopping`,
    when given, is the process's stop event: once set, waiting raises `Stopped`."""

    def __init__(self, errors: tuple[type[Exception], ...], on_error: OnError,
                 stopping: asyncio.Event | None = None, initial: float = 0.1, maximum: float = 5.0) -> None:
        self.errors = errors
        self.on_error = on_error
        self.stopping = stopping
        self.initial = initial
        self.maximum = maximum

    async def __call__(self, op: Callable[[], Awaitable[T]], what: str, *,
                       fatal: tuple[type[Exception], ...] = ()) -> T:
        """`fatal`: subclasses of `errors` that no retry can cure here; they propagate at once."""
        delay = self.initial
        while True:
            try:
                return await op()
            except fatal:
                raise
            except self.errors as exc:
                self.on_error(what, exc, delay)
            await self.sleep(delay)
            delay = min(delay * 2, self.maximum)

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds`, or raise `Stopped` as soon as the process is stopping."""
        if self.stopping is None:
            await asyncio.sleep(seconds)
            return
        if not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=seconds)
        if self.stopping.is_set():
            raise Stopped
