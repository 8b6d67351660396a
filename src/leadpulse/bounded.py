"""Remembering the most recent ids in bounded memory, oldest forgotten first.

Every process keeps a few such memories: the handoff ids the worker knows are published, the
(destination, handoff) pairs alerts has delivered, a visitor's lead. Each only has to cover a
replay window (a few batches, the tail re-read at start), and none may grow with the life of
the process.

A subclass of `OrderedDict` rather than cachetools' LRUCache: reads (`in`, `get`) stay the C
dict lookups they were, which matters on the worker's path; only a write does the bookkeeping.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Recent(OrderedDict[K, V], Generic[K, V]):
    """A mapping of at most `capacity` keys; writing a key makes it the newest."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        super().__init__()
        self.capacity = capacity

    def __setitem__(self, key: K, value: V) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        if len(self) > self.capacity:
            self.popitem(last=False)

    def copy(self) -> Recent[K, V]:  # OrderedDict.copy would pass the items as the capacity
        out: Recent[K, V] = Recent(self.capacity)
        for key, value in self.items():
            out[key] = value
        return out


class RecentIds(Recent[K, None]):
    """A set of at most `capacity` ids: `add` and `in`."""

    def add(self, key: K) -> None:
        self[key] = None
