"""Segment write keys: who may send what to the collector, and how fast.

A browser key is public (it is in every page's source), so what it may send is all anyone may
send. Each key therefore names the sources and event types it may send, and has a rate limit
counted in events. In the config file:

    collector:
      write_keys:
        - {key: wk_site, kind: browser}                         # web events only
        - {key: wk_site2, kind: browser, types: [profile/identify, profile/alias]}
        - {key: wk_backend, kind: server, sources: [email, crm], rate_limit: 2000}
        - wk_legacy                                             # a plain key: kind server

A plain key (a string, as in LEADPULSE_WRITE_KEYS=a,b) is `kind: server`: it may send every
source, as every key could before kinds existed. `kind` only sets the default of `sources`
(browser: web; server: all); `types` grants single `source/type` pairs on top of `sources`.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from ..envtext import json_or_commas
from ..events import SOURCES, Source
from .segment import EVENT_TYPES

DEFAULT_SOURCES: dict[str, tuple[str, ...]] = {"browser": ("web",), "server": SOURCES}


class WriteKey(BaseModel):
    """One accepted write key and what it may do."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: SecretStr
    name: str = ""  # a label for metrics and logs (never the key); default key1, key2, … by position
    kind: Literal["browser", "server"] = "server"
    sources: tuple[Source, ...] | None = None  # None: the kind's
    types: tuple[str, ...] = ()  # "source/type" pairs allowed besides whole `sources`
    rate_limit: float | None = Field(None, ge=0)  # events a second; None: the collector default; 0: none
    rate_burst: int | None = Field(None, ge=1)  # events at once; None: the collector default

    @field_validator("types")
    @classmethod
    def _types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pair in value:
            source, _, type_ = pair.partition("/")
            if type_ not in EVENT_TYPES.get(source, ()):
                raise ValueError(f"{pair!r} is not source/type (e.g. profile/identify)")
        return value

    @property
    def allowed_sources(self) -> tuple[str, ...]:
        return self.sources if self.sources is not None else DEFAULT_SOURCES[self.kind]

    def allows(self, source: str, type_: str) -> bool:
        return source in self.allowed_sources or f"{source}/{type_}" in self.types

    def masked(self) -> dict[str, Any]:
        return {**self.model_dump(exclude_defaults=True, exclude={"key"}), "key": "***"}


def parse_write_keys(value: Any) -> Any:
    """Settings input → WriteKey list: "a,b" or a JSON list (env), a list of strings and mappings
    (the file). Positions name unnamed keys; a key given twice is an error."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, str):
        value = json_or_commas(value, "[", "list")
    if not isinstance(value, (list, tuple)):
        raise ValueError("expected keys, comma-separated, or a list")  # noqa: TRY004 - pydantic wants ValueError
    out: list[WriteKey] = []
    for item in value:
        if isinstance(item, SecretStr):
            item = item.get_secret_value()
        if isinstance(item, str):
            if not item.strip():
                continue
            item = {"key": item.strip()}
        if isinstance(item, WriteKey):
            entry = item
        elif isinstance(item, dict):
            entry = WriteKey.model_validate(item)
        else:
            raise ValueError(f"a write key is a string or a mapping with key:, not {type(item).__name__}")
        if not entry.key.get_secret_value():
            raise ValueError("a write key must not be empty")
        out.append(entry if entry.name else entry.model_copy(update={"name": f"key{len(out) + 1}"}))
    secrets = [k.key.get_secret_value() for k in out]
    if len(set(secrets)) != len(secrets):
        raise ValueError("a write key is given twice")
    names = [k.name for k in out]
    if len(set(names)) != len(names):
        raise ValueError("two write keys have the same name")
    return tuple(out)


class KeyRing:
    """Finds the configured key a client presented, in constant time: every key is compared,
    through SHA-256 digests of one length, so neither the position of a match nor a key's
    length shows in the timing."""

    def __init__(self, keys: Iterable[WriteKey]) -> None:
        self._keys = [(hashlib.sha256(k.key.get_secret_value().encode()).digest(), k) for k in keys]

    def find(self, presented: object) -> WriteKey | None:
        if not isinstance(presented, str):
            return None
        # surrogateescape: a header byte that is not UTF-8 is a wrong key, not an error
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found = None
        for known, key in self._keys:
            if hmac.compare_digest(digest, known):
                found = key
        return found


class TokenBucket:
    """`rate` events a second, up to `burst` at once; a request of n events takes n tokens.

    A full bucket admits any request (the batch cap bounds it) and goes into debt: a batch
    larger than `burst` is then delayed, never refused forever, and the debt is paid before
    the next request is admitted. Hand-written: the libraries at hand either wait for capacity
    (aiolimiter), where we must answer at once with a Retry-After, or count fixed windows (limits).
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)
        self.stamp = clock()

    def take(self, events: int) -> float:
        """0 when admitted (the tokens are taken); else the seconds until it would be."""
        now = self.clock()
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        need = min(events, self.burst)
        if self.tokens >= need:
            self.tokens -= events
            return 0.0
        return (need - self.tokens) / self.rate


def retry_after(seconds: float) -> str:
    """A Retry-After value: whole seconds, at least 1 (clients read it as an integer)."""
    return str(max(1, math.ceil(seconds)))
