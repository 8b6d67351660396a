"""A setting given as one environment string: JSON when it opens like JSON, else comma-separated.

LEADPULSE_HANDOFF_WHO (`{...}` or `name,email=mail`) and the collector's write keys (`[...]` or
`k1,k2`) take both forms; one reading keeps their errors and their empty parts alike."""

from __future__ import annotations

from typing import Any

import orjson


def json_or_commas(text: str, opener: str, what: str) -> Any:
    """The parsed JSON when `text` starts with `opener` ("{" or "["), else its comma-separated
    parts stripped, empty ones dropped. Bad JSON is a ValueError naming `what` (pydantic's kind)."""
    text = text.strip()
    if text.startswith(opener):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not a JSON {what}: {exc}") from None
    return [part.strip() for part in text.split(",") if part.strip()]
