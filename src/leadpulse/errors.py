"""One root exception; the `retriable` flag lets the worker choose retry vs dead-letter."""

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


class StateError(LeadPulseError):
    """Redis could not be reached or answered with an error: retry, never dead-letter."""

    retriable = True


class UnknownLead(LeadPulseError):
    pass
