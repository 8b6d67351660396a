"""One root exception; the `retriable` flag (read by isolate.retriable) lets the worker choose
retry vs dead-letter."""

from __future__ import annotations


class LeadPulseError(Exception):
    retriable = False


class ConfigError(LeadPulseError):
    """Invalid settings: the CLI prints the message as one line and exits with code 2."""


class ModelError(ConfigError):
    """The scoring model YAML is invalid; the message names the path of the bad key."""


class InvalidEvent(LeadPulseError):
    """An event that cannot be scored. `reason` is a short stable code for the DLQ and metrics."""

    def __init__(self, reason: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field

    def __str__(self) -> str:
        detail = super().__str__()
        return f"{self.reason}: {detail}" if self.field is None else f"{self.reason} ({self.field}): {detail}"


class InternalFailure(InvalidEvent):
    """Handling one record failed in a way a retry would not change (a bug, or an input the
    contract let through): that record is dead-lettered with reason `internal`, the rest go on."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__("internal", f"{type(exc).__name__}: {exc}")
        kind = type(exc)
        self.exception = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


class StateError(LeadPulseError):
    """Redis could not be reached or cannot serve now (failover, loading, out of memory…):
    retry, never dead-letter."""

    retriable = True


class LeadUnreadable(LeadPulseError):
    """One lead's stored state cannot be read (read.lua fails on it, e.g. a corrupt state, or its
    reply cannot be unpacked): the lead's fault, not Redis's; the other leads read fine."""

    def __init__(self, lead_id: str, reason: str, exc: Exception) -> None:
        super().__init__(f"lead {lead_id!r} cannot be read ({reason}: {type(exc).__name__}: {exc})")
        self.lead_id, self.reason = lead_id, reason


class RedisRefused(LeadPulseError):
    """Redis refused a batch for a reason a retry would not change (a Lua runtime error, a key
    holding the wrong type, keys of one call in different slots): the batch is split to find
    the records that cause it."""

