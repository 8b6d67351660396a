"""Small builders shared by the tests: a fixed instant and an event factory."""

from __future__ import annotations

import itertools
from typing import Any

from leadpulse.events import Event

DAY = 86_400_000
T0 = 1_790_000_000_000  # 2026-09-21, a fixed instant: every test decides its own clock
_ids = itertools.count()


def event(
    source: str,
    type: str,
    at: int,
    lead: str | None = "lead-1",
    anon: str | None = None,
    event_id: str | None = None,
    traits: dict[str, Any] | None = None,
    **properties: Any,
) -> Event:
    return Event(
        event_id or f"ev-{next(_ids)}", source, type, at, lead, anon, properties, traits or {}
    )
