"""A learned logistic model as a LeadPulse scoring model: whole points, thresholds, YAML.

Points are log-odds scaled: `scale` points per unit of log-odds (20 points per doubling of the
odds by default), so a lead's score S means log-odds ≈ intercept + S/scale. Each learned feature
becomes one rule whose engine semantics are the feature's (features.py); where whole points
cannot express it exactly, the rule says so in a comment.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..events import EVENT_PROPERTIES, KNOWN_TRAITS
from ..model import ScoringModel
from ..modelcheck import DERIVED_TRAITS
from .features import Feature, Kind, Trait


@dataclass
class Learned:
    """Rules and fit rules as YAML-ready dicts, each with its comment."""
    rules: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    fit: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # learned, but rounds to 0 points


def _id(base: str, suffix: str, taken: set[str]) -> str:
    stem = base[: 40 - len(suffix)].rstrip("_")
    name, n = stem + suffix, 2
    while name in taken:
        tail = f"{suffix}_{n}"
        name, n = base[: 40 - len(tail)].rstrip("_") + tail, n + 1
    taken.add(name)
    return name


def points(features: Sequence[Feature], betas: Sequence[float], scale: float) -> Learned:
    out = Learned()
    taken: set[str] = set()
    for f, beta in zip(features, betas):
        total = scale * beta  # points the feature is worth at its full value
        what = f"{f.describe()} (log-odds {beta:+.3f})"
        if isinstance(f.of, Trait):
            p = round(total)
            if p == 0:
                out.dropped.append(what)
                continue
            out.fit.append(({"id": _id(f.of.id, "", taken), "category": f.of.category, "points": p, "when": f.of.when}, what))
            continue
        kind: Kind = f.of
        rule: dict[str, Any] = {"category": kind.category}
        note = what
        if f.form == "once":
            p = round(total)
            rule |= {"id": _id(kind.id, "_first", taken), "points": p, "once": True}
        elif f.form == "cap":
            m = int(f.m)
            p = max(1, round(total / m))
            rule |= {"id": _id(kind.id, f"_cap{m}", taken)}
            if abs(p * m - total) <= 0.25 * total:
                rule |= {"points": p, "cap": {"points": p * m}}
                if not math.isclose(p * m, total, rel_tol=0.05):
                    note += f"; learned {total:.1f} points over {m} events, whole points give {p} × {m}"
            else:  # whole points per event would miss the total: keep the total, reach it sooner
                q = max(1, math.floor(total / m))
                rule |= {"points": q, "cap": {"points": round(total)}}
                note += (f"; approximated: learned {total:.1f} points over {m} events ({total / m:.2f} a piece),"
                         f" given as {q} a piece up to {round(total)}")
        else:
            p = round(total / f.m)
            rule |= {"id": _id(kind.id, "_each", taken), "points": p}
            exact = total / f.m
            if p and not math.isclose(p, exact, rel_tol=0.1):
                note += f"; learned {exact:.2f} points a piece, rounded to {p}"
        if not rule["points"] or (rule.get("cap") and rule["cap"]["points"] < 1):
            out.dropped.append(what)
            taken.discard(rule.get("id", ""))
            continue
        rule["when"] = kind.when
        out.rules.append(({k: rule[k] for k in ("id", "category", "points", "once", "cap", "when") if k in rule}, note))
    return out


@dataclass(frozen=True)
class Target:
    kind: str  # lift | rate | per-week
    value: float

    @classmethod
    def parse(cls, text: str) -> Target:
        kind, _, value = text.partition(":")
        if kind not in ("lift", "rate", "per-week") or not value:
            raise ValueError(f"{text!r}: give lift:X (band converts at X × the base rate), rate:P (at P, 0-1) or per-week:N")
        number = float(value)
        if number <= 0 or (kind == "rate" and number > 1):
            raise ValueError(f"{text!r}: out of range")
        return cls(kind, number)

    def __str__(self) -> str:
        return f"{self.kind}:{self.value:g}"


def threshold(scores: Sequence[float], labels: Sequence[bool], target: Target, share: float, weeks: float | None) -> tuple[float, str]:
    """The lowest whole-number score whose band (score ≥ it) meets the target on the training
    leads; `share`: the training leads' share of all leads (for per-week volumes)."""
    n_all = len(scores)
    base = sum(labels) / n_all
    least = max(10, math.ceil(0.01 * n_all))
    pairs = sorted(zip(scores, labels))
    candidates = sorted({math.ceil(s) for s in scores})
    best: tuple[float, float] | None = None
    for t in candidates:
        band = [y for s, y in pairs if s >= t]
        if not band:
            break
        r = sum(band) / len(band)
        if target.kind == "per-week":
            if weeks and len(band) / share / weeks <= target.value:
                return float(t), f"{len(band) / share / weeks:.1f} a week"
            continue
        if len(band) < least:
            break
        goal = target.value * base if target.kind == "lift" else target.value
        if r >= goal:
            return float(t), f"band converts at {r:.1%} ({r / base:.2f}× base)"
        if best is None or r > best[1]:
            best = (float(t), r)
    if best is None:
        top = float(candidates[-1]) if candidates else 1.0
        return top, "target not met by any band: the highest score"
    return best[0], f"target not met: the best band with ≥ {least} leads converts at {best[1]:.1%} ({best[1] / base:.2f}× base)"


def grades(fit_scores: Sequence[float]) -> dict[str, float]:
    """A/B/C at the training leads' 75th, 50th and 25th percentile of fit points (whole, strictly
    decreasing): the old grade thresholds mean nothing on the new points."""
    ordered = sorted(fit_scores)

    def q(p: float) -> int:
        return math.ceil(ordered[min(len(ordered) - 1, int(p * len(ordered)))]) if ordered else 0

    a, b, c = q(0.75), q(0.5), q(0.25)
    b = min(b, a - 1)
    c = min(c, b - 1)
    return {"A": a, "B": b, "C": c}


def _duration(ms: float) -> str:
    ms = int(round(ms))
    for unit, size in (("w", 604_800_000), ("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def categories(model: ScoringModel, used: set[str], decay: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, spec in model.categories.items():
        cat: dict[str, Any] = {}
        if decay and spec.decay is not None:
            cat["decay"] = {"lose_percent": spec.decay.lose_percent, "after": _duration(spec.decay.after)}
        elif decay and spec.half_life is not None:
            cat["half_life"] = _duration(spec.half_life)
        if spec.description:
            cat["description"] = spec.description
        out[name] = cat or None
    for name in sorted(used - set(out)):
        out[name] = {"description": "traits the current model does not score (learned)"}
    return out


def _flow(value: Any) -> str:
    """One line of flow-style YAML (a scalar is dumped inside a list: alone it gets a document end)."""
    text = yaml.safe_dump([value], default_flow_style=True, width=10_000, allow_unicode=True, sort_keys=False).strip()
    return text[1:-1]


def render(
    model: ScoringModel, learned: Learned, stages: Sequence[dict[str, Any]], grade_points: dict[str, float],
    hysteresis: float, decay: bool, header: Sequence[str],
) -> str:
    used = {r["category"] for r, _ in learned.rules} | {r["category"] for r, _ in learned.fit}
    body = [f"# {line}" if line else "#" for line in header]
    digest = hashlib.sha1(_flow([learned.rules, learned.fit, list(stages)]).encode()).hexdigest()[:10]
    body.append(f"version: {_flow('calibrated-' + digest)}")
    body.append("")
    body.append("categories:" + ("" if decay else "   # no decay: the history's timestamps carry no meaning (--decay none)"))
    for name, spec in categories(model, used, decay).items():
        body.append(f"  {name}:" + ("" if spec is None else f" {_flow(spec)}"))
    body.append("")
    body.append("rules:" + ("" if learned.rules else " []"))
    for rule, note in learned.rules:
        body.append(f"  # {note}")
        body.append(f"  - {_flow(rule)}")
    body.append("")
    body.append("fit:")
    body.append(f"  grades: {_flow(grade_points)}   # 75th / 50th / 25th percentile of the training leads' fit points")
    body.append("  rules:" + ("" if learned.fit else " []"))
    for rule, note in learned.fit:
        body.append(f"    # {note}")
        body.append(f"    - {_flow(rule)}")
    body.append("")
    body.append("stages:")
    for stage in stages:
        note = stage.pop("_note", None)
        body.append(f"  - {_flow(stage)}" + (f"   # {note}" if note else ""))
    body.append(f"hysteresis: {hysteresis:g}")
    body.append(f"dedup_window: {_duration(model.dedup_window)}")
    body.append(f"clock_skew: {_duration(model.clock_skew)}")
    custom = custom_fields(model, learned)
    if custom:
        body.append("")
        body.append(f"custom_fields: {_flow(custom)}   # carried by the events beyond the contract")
    return "\n".join(body) + "\n"


def custom_fields(model: ScoringModel, learned: Learned) -> dict[str, Any]:
    """The model's custom fields and those the learned rules read beyond the contract: the
    history carried them, so `check-model --strict` should not take them for typos."""
    traits = set(model.custom_fields.traits) | {k for rule, _ in learned.fit for k in rule["when"]}
    traits -= KNOWN_TRAITS | DERIVED_TRAITS
    props = {source: set(names) for source, names in model.custom_fields.properties.items()}
    for rule, _ in learned.rules:
        when = rule["when"]
        extra = set(when) - {"source", "type"} - EVENT_PROPERTIES[when["source"]]
        if extra:
            props.setdefault(when["source"], set()).update(extra)
    out: dict[str, Any] = {}
    if traits:
        out["traits"] = sorted(traits)
    if any(props.values()):
        out["properties"] = {source: sorted(names) for source, names in sorted(props.items()) if names}
    return out
