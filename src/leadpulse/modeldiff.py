"""What changed between two scoring models, in words (`leadpulse diff old.yaml new.yaml`).

Compares the loaded models, not the text: reordering keys, comments and a bare scalar written
as `equals:` are no change; a threshold, a predicate or a decay that reads differently is.
Each change has a path (as model errors name them), a kind and both values for `--json`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from .abmodel import Arm, Experiment
from .durations import format_ms
from .lifecycle import OUTCOMES, Lifecycle, OutcomeAction
from .model import Cap, Category, FitRule, Predicate, Rule, ScoringModel, Stage, When


@dataclass(frozen=True, slots=True)
class Change:
    path: str  # `rules.pricing_page.points`, `stages.sql.min_score`
    kind: str  # added | removed | changed
    text: str  # the change in words
    old: Any = None
    new: Any = None

    def __str__(self) -> str:
        return self.text

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "change": self.text, "old": self.old, "new": self.new}


def _num(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"


def _duration(ms: float | None) -> str:
    if ms is None:
        return "none"
    whole = int(round(ms))
    return format_ms(whole) if math.isclose(ms, whole) and whole > 0 else f"{ms / 86_400_000:.4g}d"


def _predicate(p: Predicate) -> dict[str, Any]:
    return p.model_dump(by_alias=True, exclude_none=True, mode="json")


def _flow(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()


def _cap(cap: Cap | None) -> str:
    if cap is None:
        return "none"
    return f"{cap.points:g} points" + (f" per {_duration(cap.window)}" if cap.window else " for life")


def _once(once: bool | int) -> str:
    if once is True:
        return "once for life"
    if once is False:
        return "no"
    return f"once per {_duration(once)}"


def _rule_summary(rule: Rule) -> str:
    types = "/".join(rule.when.type) if rule.when.type else "any type"
    return f"{rule.points:g} points, {rule.when.source} {types}, category {rule.category}"


def _props(where: str, label: str, old: dict[str, Predicate], new: dict[str, Predicate]) -> Iterator[Change]:
    for name in sorted(old.keys() | new.keys()):
        a, b = old.get(name), new.get(name)
        path = f"{where}.{name}"
        if a is None and b is not None:
            yield Change(path, "added", f"{label}: predicate on {name} added: {_flow(_predicate(b))}", None, _predicate(b))
        elif b is None and a is not None:
            yield Change(path, "removed", f"{label}: predicate on {name} removed (was {_flow(_predicate(a))})", _predicate(a))
        elif a is not None and b is not None and _predicate(a) != _predicate(b):
            yield Change(path, "changed", f"{label}: {name} {_flow(_predicate(a))} -> {_flow(_predicate(b))}",
                         _predicate(a), _predicate(b))


def _when(rule_id: str, old: When, new: When) -> Iterator[Change]:
    where = f"rules.{rule_id}.when"
    if old.source != new.source:
        yield Change(f"{where}.source", "changed", f"{rule_id}: source {old.source} -> {new.source}", old.source, new.source)
    if old.type != new.type:
        a = "/".join(old.type) if old.type else "any"
        b = "/".join(new.type) if new.type else "any"
        yield Change(f"{where}.type", "changed", f"{rule_id}: type {a} -> {b}", list(old.type or ()), list(new.type or ()))
    yield from _props(where, rule_id, old.properties, new.properties)


def _field(path: str, label: str, old: Any, new: Any, show: Any = _num) -> Iterator[Change]:
    if old != new:
        yield Change(path, "changed", f"{label} {show(old)} -> {show(new)}", old, new)


def _rules(old: ScoringModel, new: ScoringModel) -> Iterator[Change]:
    a, b = {r.id: r for r in old.rules}, {r.id: r for r in new.rules}
    for rid in [r.id for r in old.rules if r.id not in b]:
        yield Change(f"rules.{rid}", "removed", f"rule {rid} removed (was {_rule_summary(a[rid])})", rid)
    for rid in [r.id for r in new.rules if r.id not in a]:
        yield Change(f"rules.{rid}", "added", f"rule {rid} added: {_rule_summary(b[rid])}", None, rid)
    for rule in new.rules:
        was = a.get(rule.id)
        if was is None:
            continue
        p = f"rules.{rule.id}"
        yield from _field(f"{p}.points", f"{rule.id}: points", was.points, rule.points)
        yield from _field(f"{p}.category", f"{rule.id}: category", was.category, rule.category, str)
        yield from _field(f"{p}.cap", f"{rule.id}: cap", was.cap, rule.cap, _cap)
        yield from _field(f"{p}.once", f"{rule.id}: once", was.once, rule.once, _once)
        yield from _field(f"{p}.decay", f"{rule.id}: half-life", old.half_life_ms(was), new.half_life_ms(rule), _duration)
        yield from _field(f"{p}.intent", f"{rule.id}: intent", was.intent, rule.intent, _yes)
        yield from _field(f"{p}.description", f"{rule.id}: description", was.description, rule.description, repr)
        yield from _when(rule.id, was.when, rule.when)


def _fit_summary(rule: FitRule) -> str:
    return f"{rule.points:g} points on {', '.join(sorted(rule.when))}, category {rule.category}"


def _fit(old: ScoringModel, new: ScoringModel) -> Iterator[Change]:
    a, b = {r.id: r for r in old.fit.rules}, {r.id: r for r in new.fit.rules}
    for rid in [r.id for r in old.fit.rules if r.id not in b]:
        yield Change(f"fit.rules.{rid}", "removed", f"fit rule {rid} removed (was {_fit_summary(a[rid])})", rid)
    for rid in [r.id for r in new.fit.rules if r.id not in a]:
        yield Change(f"fit.rules.{rid}", "added", f"fit rule {rid} added: {_fit_summary(b[rid])}", None, rid)
    for rule in new.fit.rules:
        was = a.get(rule.id)
        if was is None:
            continue
        p = f"fit.rules.{rule.id}"
        yield from _field(f"{p}.points", f"fit {rule.id}: points", was.points, rule.points)
        yield from _field(f"{p}.category", f"fit {rule.id}: category", was.category, rule.category, str)
        yield from _props(f"{p}.when", f"fit {rule.id}", was.when, rule.when)
    yield from _field("fit.unknown_below", "fit: unknown_below", old.fit.unknown_below, new.fit.unknown_below)
    for grade in ("A", "B", "C"):
        yield from _field(f"fit.grades.{grade}", f"grade {grade}: min fit points", old.fit.grades[grade],  # type: ignore[index]
                          new.fit.grades[grade])  # type: ignore[index]


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _idle(c: Category) -> str:
    d = c.decay
    return f"-{d.lose_percent:g} % per {_duration(d.after)} idle" if d is not None and c.idle else "none"


def _category(name: str, c: Category) -> str:
    hl = c.half_life_ms
    decay = f"idle decay {_idle(c)}" if c.idle else f"half-life {_duration(hl) if hl else 'none (no decay)'}"
    return f"weight {c.weight:g}, cap {_num(c.cap)}, {decay}"


def _categories(old: ScoringModel, new: ScoringModel) -> Iterator[Change]:
    for name in [n for n in old.categories if n not in new.categories]:
        yield Change(f"categories.{name}", "removed", f"category {name} removed (was {_category(name, old.categories[name])})", name)
    for name, cat in new.categories.items():
        was = old.categories.get(name)
        if was is None:
            yield Change(f"categories.{name}", "added", f"category {name} added: {_category(name, cat)}", None, name)
            continue
        p = f"categories.{name}"
        yield from _field(f"{p}.weight", f"category {name}: weight", was.weight, cat.weight)
        yield from _field(f"{p}.cap", f"category {name}: cap", was.cap, cat.cap)
        yield from _field(f"{p}.decay", f"category {name}: half-life", was.half_life_ms, cat.half_life_ms, _duration)
        yield from _field(f"{p}.decay.idle", f"category {name}: idle decay", _idle(was), _idle(cat), str)


def _points(s: Stage) -> str:
    m = s.min_points
    return "none" if m is None else f"{m.points:g} from {'+'.join(m.from_)}"


def _stage(s: Stage) -> str:
    conditions = (f", min_grade {s.min_grade}" if s.min_grade else "") + (
        f", min_points {_points(s)}" if s.min_points else "") + (f", min_intent {s.min_intent}" if s.min_intent else "") + (
        f", min_completeness {s.min_completeness:g}" if s.min_completeness else "")
    return f"min_score {s.min_score:g}" + conditions + (", handoff" if s.handoff else "")


def _stages(old: ScoringModel, new: ScoringModel) -> Iterator[Change]:
    a, b = {s.name: s for s in old.stages}, {s.name: s for s in new.stages}
    for s in old.stages:
        if s.name not in b:
            yield Change(f"stages.{s.name}", "removed", f"stage {s.name} removed (was {_stage(s)})", s.name)
    for s in new.stages:
        was = a.get(s.name)
        if was is None:
            yield Change(f"stages.{s.name}", "added", f"stage {s.name} added: {_stage(s)}", None, s.name)
            continue
        p = f"stages.{s.name}"
        yield from _field(f"{p}.min_score", f"stage {s.name}: min_score", was.min_score, s.min_score)
        yield from _field(f"{p}.min_grade", f"stage {s.name}: min_grade", was.min_grade, s.min_grade, lambda g: g or "none")
        yield from _field(f"{p}.min_points", f"stage {s.name}: min_points", _points(was), _points(s), str)
        yield from _field(f"{p}.min_intent", f"stage {s.name}: min_intent", was.min_intent, s.min_intent)
        yield from _field(f"{p}.min_completeness", f"stage {s.name}: min_completeness", was.min_completeness,
                          s.min_completeness)
        yield from _field(f"{p}.handoff", f"stage {s.name}: handoff", was.handoff, s.handoff, lambda h: "yes" if h else "no")
    if [s.name for s in old.stages if s.name in b] != [s.name for s in new.stages if s.name in a]:
        yield Change("stages", "changed", "stages reordered: " + " → ".join(s.name for s in new.stages),
                     [s.name for s in old.stages], [s.name for s in new.stages])


def _arms(e: Experiment) -> str:
    total = sum(a.share for a in e.arms)
    def bars(a: Arm) -> str:
        parts = [f"{k} {_num(v.min_score)}" for k, v in a.stages.items() if v.min_score is not None]
        parts += [f"{k} grade {v.min_grade}" for k, v in a.stages.items() if v.min_grade is not None]
        parts += [f"hysteresis {a.hysteresis:g}"] if a.hysteresis is not None else []
        parts += [f"grades {_flow(dict(a.grades))}"] if a.grades is not None else []
        parts += [f"{k} {_flow(v.model_dump(exclude_none=True))}" for k, v in a.categories.items()]
        return f" ({', '.join(parts)})" if parts else ""
    return ", ".join(f"{a.name} {a.share / total:.0%}{bars(a)}" for a in e.arms)


def _experiments(old: ScoringModel, new: ScoringModel) -> Iterator[Change]:
    """An A/B test started, ended or changed (its split or an arm's bars), in one line each."""
    a, b = {e.name: e for e in old.experiments}, {e.name: e for e in new.experiments}
    for name, e in a.items():
        if name not in b:
            yield Change(f"experiments.{name}", "removed", f"experiment {name} ended (was {_arms(e)})", name)
    for name, e in b.items():
        if name not in a:
            yield Change(f"experiments.{name}", "added", f"experiment {name} started: {_arms(e)}", None, name)
        elif a[name].arms != e.arms:
            yield Change(f"experiments.{name}", "changed", f"experiment {name}: {_arms(a[name])} -> {_arms(e)}",
                         _arms(a[name]), _arms(e))


def _action(a: OutcomeAction | None) -> str:
    if a is None or a.ignore:
        return "moves nothing"
    if a.stage is not None:
        return f"→ {a.stage}"
    return f"recycled, cool-down {_duration(a.recycle)}"


def _lifecycle(old: Lifecycle, new: Lifecycle) -> Iterator[Change]:
    yield from _field("lifecycle.stages", "lifecycle stages", [s.name for s in old.stages],
                      [s.name for s in new.stages], lambda v: " → ".join(v) or "none")
    for outcome in OUTCOMES:
        a, b = _action(old.outcomes.get(outcome)), _action(new.outcomes.get(outcome))  # type: ignore[call-overload]
        yield from _field(f"lifecycle.outcomes.{outcome}", f"outcome {outcome}", a, b, str)
    yield from _field("lifecycle.sla", "sales SLA", old.sla, new.sla, _duration)


def changes(old: ScoringModel, new: ScoringModel) -> list[Change]:
    """Every difference that changes how leads are scored or staged, in the model's order."""
    out: list[Change] = []
    out += _field("version", "version", old.version, new.version, str)
    out += _categories(old, new)
    out += _rules(old, new)
    out += _fit(old, new)
    out += _stages(old, new)
    out += _field("hysteresis", "hysteresis", old.hysteresis, new.hysteresis)
    out += _experiments(old, new)
    for name in ("dedup_window", "clock_skew", "max_event_age"):
        out += _field(name, name, getattr(old, name), getattr(new, name), _duration)
    out += _lifecycle(old.lifecycle, new.lifecycle)
    return out
