"""What each lead did before its outcome, as candidate rules a points model can learn from.

A candidate is something the engine can already express: a `when` on events (a `Kind`) or on
traits (a `Trait`). Matching is the engine's own (`Scorer` over a probe model holding one rule
per candidate), so a learned feature means in the candidate YAML exactly what it meant here.
Each Kind gives columns whose meaning is a rule form:

  once     first matching event                         -> `once: true`
  cap m    min(matches, m) / m                          -> points q per event, lifetime cap q·m
  linear   matches / scale                              -> points q per event, no cap (any sign)

and each Trait one 0/1 column (a fit rule, any sign). Awards in decaying categories are counted
decayed to the lead's outcome time, as the engine reads them then.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson

from ..engine import Scorer
from ..errors import ConfigError, InvalidEvent
from ..events import Event, from_dict
from ..model import URL_PROPERTIES, Category, Fit, FitRule, Rule, ScoringModel, Stage
from ..urls import url_path

#: any timestamp is accepted: history is replayed, not received
_NO_FUTURE = 253_402_300_799_999
#: a property or trait with more distinct values than this is numeric (thresholds) or skipped
MAX_VALUES = 12
QUANTILES = (0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 0.95)
Form = Literal["once", "cap", "linear", "fit"]


@dataclass
class Events:
    events: list[Event] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)


def read_events(path: Path) -> Events:
    """Every valid event of a JSONL file; the invalid ones by line and reason (never lost silently)."""
    out = Events()
    try:
        lines = path.open("rb")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    with lines:
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                out.events.append(from_dict(orjson.loads(line), _NO_FUTURE, 0))
            except orjson.JSONDecodeError as exc:
                out.invalid.append(f"{path.name}:{n}: invalid_json: {exc}")
            except InvalidEvent as exc:
                out.invalid.append(f"{path.name}:{n}: {exc}")
    return out


@dataclass
class History:
    lead_id: str
    label: bool
    at: int  # the deciding outcome's time: everything before it counts
    events: list[Event] = field(default_factory=list)  # time order, anonymous ones linked to it included
    traits: dict[str, Any] = field(default_factory=dict)  # identify traits merged in time order


def histories(events: Sequence[Event], decided: Mapping[str, tuple[bool, int]]) -> dict[str, History]:
    """Each labelled lead's events before its outcome. Anonymous events count for the lead a
    profile event first linked them to, as in the engine (first link wins)."""
    links: dict[str, str] = {}
    for e in sorted(events, key=lambda e: e.occurred_at):
        if e.source == "profile" and e.lead_id and e.anonymous_id:
            links.setdefault(e.anonymous_id, e.lead_id)
    out = {lead: History(lead, label, at) for lead, (label, at) in decided.items()}
    for e in sorted(events, key=lambda e: e.occurred_at):
        lead = e.lead_id or links.get(e.anonymous_id or "")
        h = out.get(lead or "")
        if h is None or e.occurred_at >= h.at:
            continue
        h.events.append(e)
        if e.source == "profile" and e.type == "identify" and e.lead_id:
            h.traits.update(e.traits)
    return out


@dataclass(frozen=True)
class Kind:
    id: str
    when: dict[str, Any]  # the YAML `when`: source, type and property predicates
    category: str
    half_life: float | None  # ms; None: no decay
    label: str


@dataclass(frozen=True)
class Trait:
    id: str
    when: dict[str, Any]  # trait -> predicate
    category: str
    label: str


@dataclass(frozen=True)
class Feature:
    of: Kind | Trait
    form: Form
    m: float = 1.0  # cap: the events capped at; linear: the count scaled by

    @property
    def signed(self) -> bool:
        """Can the engine give this feature negative points? (caps and once are positive only)"""
        return self.form in ("linear", "fit")

    def describe(self) -> str:
        if self.form == "fit":
            return self.of.label
        if self.form == "once":
            return f"{self.of.label}: first one"
        if self.form == "cap":
            return f"{self.of.label}: each of the first {self.m:g}"
        return f"{self.of.label}: each one"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(text).casefold()).strip("_")


class _Ids:
    def __init__(self, taken: Iterable[str] = ()) -> None:
        self.taken = set(taken)

    def __call__(self, *parts: Any) -> str:
        base = "_".join(p for p in (_slug(x) for x in parts) if p) or "rule"
        if not base[0].isalpha():
            base = "r_" + base
        base = base[:32].rstrip("_")
        name, n = base, 2
        while name in self.taken:
            name, n = f"{base}_{n}", n + 1
        self.taken.add(name)
        return name


def _scalar(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool)) and v != ""


def _numeric(values: Iterable[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _thresholds(values: Sequence[float]) -> list[float]:
    qs = np.quantile(np.asarray(values, dtype=float), QUANTILES)
    return sorted({float(round(q, 6)) for q in qs if q > min(values)})


def _fold(v: Any) -> Any:
    return v.casefold() if isinstance(v, str) else v


def event_kinds(model: ScoringModel, leads: Sequence[History], min_support: int, decay: bool) -> list[Kind]:
    """The current model's rules, every (source, type), and (source, type, property) splits:
    each value of a few-valued property, the property missing, thresholds of a numeric one."""
    ids = _Ids(r.id for r in (*model.rules, *model.fit.rules))
    by_source: dict[str, Counter[str]] = defaultdict(Counter)
    for r in model.rules:
        by_source[r.when.source][r.category] += 1
    fallback = next((c for c, spec in model.categories.items() if spec.half_life_ms is not None), next(iter(model.categories)))

    def category(source: str) -> str:
        return by_source[source].most_common(1)[0][0] if by_source[source] else fallback

    def hl(cat: str) -> float | None:
        return model.categories[cat].half_life_ms if decay else None

    kinds = [
        Kind(r.id, _when_yaml(r), r.category, model.half_life_ms(r) if decay else None, r.description or r.id)
        for r in model.rules
    ]
    support: Counter[tuple[str, str]] = Counter()  # leads with an event of (source, type)
    values: dict[tuple[str, str, str], dict[str, list[Any]]] = defaultdict(dict)  # -> lead -> values
    for h in leads:
        for e in h.events:
            if e.source == "profile":
                continue
            for key, v in e.properties.items():
                if _scalar(v):
                    if key in URL_PROPERTIES and isinstance(v, str):
                        v = url_path(v)  # what a predicate on it sees: split by page, not by utm tags
                    values[(e.source, e.type, key)].setdefault(h.lead_id, []).append(_fold(v))
        support.update({(e.source, e.type) for e in h.events if e.source != "profile"})
    lacking: Counter[tuple[str, str, str]] = Counter()  # leads with an event of the type without the key
    keys_of: dict[tuple[str, str], list[str]] = defaultdict(list)
    for s, t, key in values:
        keys_of[(s, t)].append(key)
    for h in leads:
        found = set()
        for e in h.events:
            for key in keys_of.get((e.source, e.type), ()):
                if not _scalar(e.properties.get(key)):
                    found.add((e.source, e.type, key))
        lacking.update(found)
    for (source, type_), n in sorted(support.items()):
        if n < min_support:
            continue
        cat = category(source)
        kinds.append(Kind(ids(source, type_), {"source": source, "type": type_}, cat, hl(cat), f"{source} {type_}"))
        for (s, t, key), per_lead in sorted(values.items()):
            if (s, t) != (source, type_):
                continue
            flat = [v for vs in per_lead.values() for v in vs]
            distinct = set(flat)
            base = {"source": source, "type": type_}
            if lacking[(s, t, key)] >= min_support and len(per_lead) >= min_support:
                kinds.append(Kind(ids(type_, "no", key), base | {key: {"exists": False}}, cat, hl(cat), f"{source} {type_} without {key}"))
            if _numeric(distinct) and len(distinct) > MAX_VALUES:
                peaks = [max(vs) for vs in per_lead.values()]
                for x in _thresholds(peaks):
                    if sum(1 for p in peaks if p >= x) >= min_support:
                        kinds.append(Kind(ids(type_, key, f"{x:g}"), base | {key: {"gte": x}}, cat, hl(cat), f"{source} {type_} with {key} ≥ {x:g}"))
            elif len(distinct) <= MAX_VALUES:
                for value in sorted(distinct, key=str):
                    if sum(1 for vs in per_lead.values() if value in vs) >= min_support:
                        kinds.append(Kind(ids(type_, key, value), base | {key: value}, cat, hl(cat), f"{source} {type_} with {key} = {value}"))
    return kinds


def _when_yaml(rule: Rule) -> dict[str, Any]:
    out: dict[str, Any] = {"source": rule.when.source}
    if rule.when.type:
        out["type"] = list(rule.when.type) if len(rule.when.type) > 1 else rule.when.type[0]
    for key, pred in rule.when.properties.items():
        out[key] = pred.model_dump(mode="json", by_alias=True, exclude_none=True)  # lists, not tuples
    return out


def trait_kinds(model: ScoringModel, leads: Sequence[History], min_support: int) -> list[Trait]:
    """The current model's fit rules, each few-valued trait's values (and its absence), and
    thresholds of numeric traits."""
    ids = _Ids(r.id for r in (*model.rules, *model.fit.rules))
    owner = {key: r.category for r in model.fit.rules for key in r.when}
    out = [
        Trait(r.id, {k: p.model_dump(by_alias=True, exclude_none=True) for k, p in r.when.items()}, r.category, r.description or r.id)
        for r in model.fit.rules
    ]
    n = len(leads)
    keys = sorted({k for h in leads for k, v in h.traits.items() if _scalar(v)})
    for key in keys:
        cat = owner.get(key, "profile")
        got = [_fold(h.traits[key]) for h in leads if _scalar(h.traits.get(key))]
        missing = n - len(got)
        if min_support <= missing <= n - min_support:
            out.append(Trait(ids(key, "unknown"), {key: {"exists": False}}, cat, f"{key} not given"))
        distinct = set(got)
        if _numeric(distinct) and len(distinct) > MAX_VALUES:
            for x in _thresholds(got):
                if min_support <= sum(1 for v in got if v >= x) <= n - min_support:
                    out.append(Trait(ids(key, "gte", f"{x:g}"), {key: {"gte": x}}, cat, f"{key} ≥ {x:g}"))
        else:
            for value, count in sorted(Counter(got).items(), key=lambda kv: str(kv[0])):
                if min_support <= count <= n - min_support:
                    out.append(Trait(ids(key, value), {key: value}, cat, f"{key} = {value}"))
    return out


def probe(model: ScoringModel, kinds: Sequence[Kind], traits: Sequence[Trait]) -> Scorer:
    """A model with one rule per candidate: the engine's matching, reused as is."""
    cats = {c: Category() for c in {*model.categories, *(k.category for k in kinds), *(t.category for t in traits)}}
    rules = tuple(Rule(id=k.id, category=k.category, points=1, when=k.when) for k in kinds)
    fit = Fit(rules=tuple(FitRule(id=t.id, category=t.category, points=1, when=t.when) for t in traits))
    return Scorer(ScoringModel(version="probe", categories=cats, rules=rules, fit=fit,
                               stages=(Stage(name="lead", min_score=0), Stage(name="top", min_score=1))))


def _weights(times: Sequence[int], at: int, half_life: float | None) -> np.ndarray:
    t = np.asarray(times, dtype=float)
    return np.ones(len(t)) if half_life is None else np.exp2(-(at - t) / half_life)


def matches(scorer: Scorer, leads: Sequence[History]) -> list[tuple[dict[str, list[int]], set[str]]]:
    """Per lead: times of each kind's matches, and the traits rules that hold."""
    out = []
    for h in leads:
        hits: dict[str, list[int]] = defaultdict(list)
        for e in h.events:
            for rule_id, _ in scorer.matched(e):
                hits[rule_id].append(e.occurred_at)
        out.append((hits, set(scorer.fit(h.traits))))
    return out


def design(kinds: Sequence[Kind], traits: Sequence[Trait], train: Sequence[tuple[dict[str, list[int]], set[str]]],
           min_support: int) -> list[Feature]:
    """The columns worth fitting, decided on the training leads only."""
    features: list[Feature] = []
    for k in kinds:
        counts = np.array([len(hits.get(k.id, ())) for hits, _ in train])
        nonzero = counts[counts > 0]
        if len(nonzero) < min_support:
            continue
        top = int(nonzero.max())
        features.append(Feature(k, "linear", float(max(1, round(float(np.quantile(nonzero, 0.9)))))))
        if top > 1:
            features.append(Feature(k, "once"))
            for m in sorted({int(round(float(np.quantile(nonzero, q)))) for q in (0.5, 0.75, 0.9)}):
                if 1 < m < top:
                    features.append(Feature(k, "cap", float(m)))
    for t in traits:
        holds = sum(1 for _, fits in train if t.id in fits)
        if min_support <= holds <= len(train) - min_support:
            features.append(Feature(t, "fit"))
    return features


def columns(features: Sequence[Feature], hits: Sequence[tuple[dict[str, list[int]], set[str]]], leads: Sequence[History]) -> np.ndarray:
    x = np.zeros((len(leads), len(features)))
    for i, ((times, fits), h) in enumerate(zip(hits, leads)):
        for j, f in enumerate(features):
            if isinstance(f.of, Trait):
                x[i, j] = 1.0 if f.of.id in fits else 0.0
                continue
            ts = times.get(f.of.id)
            if not ts:
                continue
            w = _weights(ts, h.at, f.of.half_life)
            if f.form == "once":
                x[i, j] = w[0]
            elif f.form == "cap":
                x[i, j] = float(w[: int(f.m)].sum()) / f.m
            else:
                x[i, j] = float(w.sum()) / f.m
    return x


def distinct_columns(features: list[Feature], x: np.ndarray) -> tuple[list[Feature], np.ndarray]:
    """Drop constant columns and repeats of an earlier column (the first, most flexible form wins)."""
    keep: list[int] = []
    seen: set[bytes] = set()
    for j in range(x.shape[1]):
        col = x[:, j]
        if math.isclose(float(col.min()), float(col.max())):
            continue
        key = np.round(col, 9).tobytes()
        if key in seen:
            continue
        seen.add(key)
        keep.append(j)
    return [features[j] for j in keep], x[:, keep]
