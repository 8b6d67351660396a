"""Human durations in YAML and env vars: "30d", "12h", "5m", "90s", "250ms" or plain seconds."""

from __future__ import annotations

import re

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")


def parse_ms(value: object) -> int:
    """Milliseconds from a duration; numbers are seconds. Raises ValueError with the reason."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30d, 12h, 5m or 90s")
    if isinstance(value, (int, float)):
        if value < 0 or value != value or value in (float("inf"),):
            raise ValueError("a duration must be a finite number >= 0")
        return int(round(value * 1000))
    if isinstance(value, str):
        match = _PATTERN.match(value)
        if match:
            number, unit = match.groups()
            return int(round(float(number) * _UNITS_MS[unit or "s"]))
    raise ValueError(f"{value!r} is not a duration such as 30d, 12h, 5m or 90s")



def format_ms(ms: int) -> str:
    """The shortest exact way to write a duration: 2592000000 -> "30d" (for messages)."""
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNITS_MS[unit]
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"
