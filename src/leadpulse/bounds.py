"""What Redis may hold, and what it refuses: how long keys live (settings), and writes refused.

Retention is set by LEADPULSE_LEAD_TTL and the others (settings.py) and applied by the scripts
(lua/lib.lua, anon.lua, link.lua, erase.lua); docs/operations.md, Memory bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis.exceptions import OutOfMemoryError, ReadOnlyError

from .errors import ConfigError, StateError
from .who import DEFAULT_WHO, who_traits

if TYPE_CHECKING:
    from .model import ScoringModel
    from .settings import Settings

_DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class Retention:
    """How long Redis keeps what (LEADPULSE_LEAD_TTL and the others, settings.py); 0 = forever."""

    #: a lead in the first stage, after its last event (lib.lua: expiry)
    lead_ttl_ms: int = 400 * _DAY_MS
    #: an anonymous visitor not linked to a lead, after its last event; and its most events kept
    anon_ttl_ms: int = 90 * _DAY_MS
    anon_max_events: int = 1000
    #: a visitor's link to its lead, from the first link
    alias_ttl_ms: int = 400 * _DAY_MS
    #: an erased lead's tombstone (admin.forget): its events are refused this long
    tombstone_ttl_ms: int = 400 * _DAY_MS
    #: traits kept besides those the fit rules read: what handoffs name (who.py), opt-outs
    who_traits: frozenset[str] = who_traits(DEFAULT_WHO)
    #: entries of a lead's activity log (the board's lead page; lua/activity.lua); 0: none kept
    activity_max: int = 50

    @classmethod
    def from_settings(cls, settings: Settings) -> Retention:
        return cls(settings.lead_ttl, settings.anon_ttl, settings.anon_max_events, settings.alias_ttl,
                   settings.tombstone_ttl, who_traits(settings.handoff_who), settings.activity_max)

    def check(self, model: ScoringModel) -> None:
        if 0 < self.lead_ttl_ms < model.dedup_window:
            raise ConfigError(
                f"lead_ttl (LEADPULSE_LEAD_TTL) must be 0 (keep forever) or at least the model's dedup_window "
                f"({model.dedup_window} ms): a lead must not be forgotten while its events can still be redelivered"
            )
        if self.anon_ttl_ms <= 0 or self.anon_max_events <= 0:
            raise ConfigError("anon_ttl and anon_max_events must be > 0: an unlinked visitor is never kept forever")


def write_refusal(exc: BaseException) -> str | None:
    """"oom" or "readonly" when Redis refused a write (maxmemory reached under noeviction; a
    replica), else None. Transient: the write succeeds as is once Redis accepts writes again (a
    script refused this way wrote nothing), so the batch is retried, never dead-lettered."""
    cause = exc.__cause__ if isinstance(exc, StateError) and exc.__cause__ is not None else exc
    if isinstance(cause, OutOfMemoryError):
        return "oom"
    if isinstance(cause, ReadOnlyError):
        return "readonly"
    return None
