"""Parts of the op each event becomes for apply.lua (state.LeadStore._op), built for the hot
path: its dedup member, its rule matches (remembered per shape), and the packer of the calls.
"""

from __future__ import annotations

import binascii
import hashlib
from typing import Any

import msgpack

from .engine import Scorer
from .events import Event

#: rule-match answers remembered (Scorer.match_key); all are dropped when full
MATCH_CACHE = 4096

_URLSAFE = bytes.maketrans(b"+/", b"-_")
_blake2b, _b64 = hashlib.blake2b, binascii.b2a_base64
#: one packer for every apply.lua argument: msgpack.packb builds (and frees) a Packer per call.
#: Never shared across an await: pack() runs to completion, so one per process is safe.
pack = msgpack.Packer().pack


def dedup_member(event_id: str) -> str:
    # 64 bits of the id: per-lead collisions are negligible, and the set stays small. URL-safe
    # base64 by hand (b2a_base64 + translate): base64.urlsafe_b64encode is the same in 3 calls.
    return _b64(_blake2b(event_id.encode(), digest_size=8).digest(), newline=False)[:11].translate(_URLSAFE).decode()


class Matches:
    """An event's matches as the op carries them (rule code, points, …), remembered per
    Scorer.match_key: rules are pure, and most events repeat a few shapes (a page's URL, an
    email event without properties). Forgotten when the scorer or the table of codes changes."""

    def __init__(self) -> None:
        self._for: tuple[Scorer, dict[str, int]] | None = None
        self._known: dict[tuple[Any, ...], list[Any]] = {}

    def of(self, event: Event, scorer: Scorer, codes: dict[str, int]) -> list[Any]:
        """Shared by the ops of equal keys: read-only."""
        if self._for is None or self._for[0] is not scorer or self._for[1] is not codes:
            self._for, self._known = (scorer, codes), {}
        key = scorer.match_key(event)
        matches = self._known.get(key) if key is not None else None
        if matches is None:
            matches = [x for rule_id, points in scorer.matched(event) for x in (codes[rule_id], points)]
            if key is not None:
                if len(self._known) >= MATCH_CACHE:
                    self._known.clear()
                self._known[key] = matches
        return matches
