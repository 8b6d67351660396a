"""Score bands and rates: one definition, used by the report and by calibration alike.

Decile of a lead among n scored leads: d = ⌊10·r/n⌋ + 1, where r is the number of leads with
a strictly lower score. Tied scores therefore share a decile (the one of their lowest rank), so
a decile may hold more or fewer than a tenth of the leads, and some may be empty; decile 10
holds the highest scores.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

DECILES = 10


def rate(hits: int, total: int) -> float | None:
    """hits / total; None (not 0) when there is nothing to divide."""
    return hits / total if total else None


def decile_of(scores: Sequence[float]) -> list[int]:
    ordered = sorted(scores)
    n = len(ordered)
    return [DECILES * bisect.bisect_left(ordered, s) // n + 1 for s in scores]


def by_decile(scores: Sequence[float], labels: Sequence[bool]) -> list[dict[str, Any]]:
    """Per non-empty decile: leads, converted, rate, score range and lift over the base rate."""
    base = rate(sum(labels), len(labels))
    rows: dict[int, list[tuple[float, bool]]] = {}
    for d, s, y in zip(decile_of(scores), scores, labels):
        rows.setdefault(d, []).append((s, y))
    out = []
    for d in sorted(rows):
        members = rows[d]
        hits = sum(1 for _, y in members if y)
        r = rate(hits, len(members))
        out.append({
            "decile": d, "leads": len(members), "converted": hits, "rate": r,
            "score_min": min(s for s, _ in members), "score_max": max(s for s, _ in members),
            "lift": None if r is None or not base else r / base,
        })
    return out


def top_decile_lift(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Conversion of the highest non-empty decile over the base rate."""
    rows = by_decile(scores, labels)
    return rows[-1]["lift"] if rows else None
