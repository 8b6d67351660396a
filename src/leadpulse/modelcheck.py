"""What `check-model` warns about: a model that loads but cannot do what its author meant.

Model errors (model.py) stop a model from loading. These do not, since each may be deliberate
(properties and traits are free-form), but each is silent at run time: a rule on a type no event
of its source has never fires, a misspelt trait never matches, a stage above the most a lead can
score is never reached. `check-model --strict` fails on them. docs/scoring.md lists them.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from . import experiments
from .events import EVENT_PROPERTIES, EVENT_TYPES, KNOWN_TRAITS
from .model import GRADES, Predicate, ScoringModel

#: traits the worker derives (engine.derived_traits), so a fit rule may read them
DERIVED_TRAITS = frozenset({"email_domain"})


@dataclass(frozen=True, slots=True)
class Finding:
    where: str  # the model path, as model errors give it: rules[3].when.type
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def _suggest(word: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, sorted(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def findings(model: ScoringModel) -> list[Finding]:
    return [*_rules(model), *_fit(model), *_stages(model), *_experiments(model)]


def _experiments(model: ScoringModel) -> Iterator[Finding]:
    """Arms that score alike: the test would compare a lead split with itself."""
    split = experiments.split(model)
    if split is None:
        return
    seen: dict[object, str] = {}
    for i, arm in enumerate(split.experiment.arms):
        m = split.models[f"{split.experiment.name}{experiments.SEPARATOR}{arm.name}"]
        bars = (tuple((s.min_score, s.min_grade) for s in m.stages), m.hysteresis, tuple(m.fit.grades.items()),
                tuple((k, c.weight, c.cap) for k, c in m.categories.items()))
        if bars in seen:
            yield Finding(f"experiments[0].arms[{i}]", f"arm {arm.name!r} scores and stages leads as arm "
                          f"{seen[bars]!r} does (same bars, hysteresis, grades and weights): the test cannot tell them apart")
        seen.setdefault(bars, arm.name)


def _rules(model: ScoringModel) -> Iterator[Finding]:
    declared = model.custom_fields.properties
    for i, rule in enumerate(model.rules):
        source = rule.when.source
        types = EVENT_TYPES[source]
        for type_ in rule.when.type or ():
            if type_ not in types:
                yield Finding(f"rules[{i}].when.type", f"{type_!r} is not a {source} event type, so the rule never "
                              f"fires ({source} types: {', '.join(types)}){_suggest(type_, types)}")
        known = EVENT_PROPERTIES[source] | set(declared.get(source, ()))
        for name, pred in rule.when.properties.items():
            where = f"rules[{i}].when.{name}"
            if name not in known:
                listed = ", ".join(sorted(EVENT_PROPERTIES[source])) or "none"
                yield Finding(where, f"{source} events define no property {name!r} (defined: {listed}); the rule "
                              f"matches only events that send it (declare it under custom_fields.properties."
                              f"{source}){_suggest(name, known)}")
            yield from _url_operands(where, name, pred)


def _fit(model: ScoringModel) -> Iterator[Finding]:
    known = KNOWN_TRAITS | DERIVED_TRAITS | set(model.custom_fields.traits)
    for i, rule in enumerate(model.fit.rules):
        for name, pred in rule.when.items():
            where = f"fit.rules[{i}].when.{name}"
            if name not in known:
                yield Finding(where, f"{name!r} is not a trait of the event contract nor a declared custom trait "
                              f"(custom_fields.traits), so no identify is likely to carry it{_suggest(name, known)}")
            yield from _url_operands(where, name, pred)


def _operands(pred: Predicate) -> Iterator[tuple[str, str]]:
    for op in ("equals", "in_", "not_in", "contains", "glob", "regex"):
        value = getattr(pred, op)
        for item in (value,) if isinstance(value, (str, int, float, bool)) else value or ():
            if isinstance(item, str):
                yield op.rstrip("_"), item


def _url_operands(where: str, name: str, pred: Predicate) -> Iterator[Finding]:
    """Operands a URL's part can never equal: a full URL or a query against the path, a
    trailing slash (paths are compared without), a path against the host."""
    part = pred.url_part(name)
    if part == "full":
        return
    for op, text in _operands(pred):
        if part == "path":
            if "://" in text:
                yield Finding(where, f"{op} {text!r} looks like a full URL, but {name} is matched on its path "
                              f"(write the path, e.g. '/pricing', or add part: full)")
            elif op not in ("glob", "regex") and ("?" in text or "#" in text):
                yield Finding(where, f"{op} {text!r} holds a query or fragment, which the path of {name} never does "
                              f"(add part: full to match the whole URL)")
            elif op in ("equals", "in", "not_in", "glob") and len(text) > 1 and text.endswith("/"):
                yield Finding(where, f"{op} {text!r} ends with '/', but paths are compared without their trailing "
                              f"slash (write {text.rstrip('/') or '/'!r})")
        elif part == "host" and op != "regex" and "/" in text:
            yield Finding(where, f"{op} {text!r} holds a '/', which the host of {name} never does")


def max_score(model: ScoringModel) -> float:
    return sum(most_by_category(model).values())


def most_by_category(model: ScoringModel) -> dict[str, float]:
    """The most any lead can score: every positive rule at its cap, every positive fit rule,
    then weights and category caps. Exact caps assume events arrive in time order (a late
    event is checked only against earlier awards, docs/scoring.md §6). A window cap of P points
    on a rule with half-life h holds at most P / (1 - 2^(-window/h)) at any instant (P in each
    window back, each window worth 2^(-window/h) less); without a cap, or without decay under a
    window cap (idle decay: nothing decays while the lead is active), there is no bound.
    Per category, weighted and capped."""
    raw: dict[str, float] = {}
    for rule in model.rules:
        if rule.points <= 0:
            continue
        cap, half_life = rule.effective_cap, model.half_life_ms(rule)
        if cap is None or (cap.window is not None and half_life is None):
            most = math.inf
        elif cap.window is None:
            most = cap.points
        else:
            most = cap.points / -math.expm1(-math.log(2) * cap.window / half_life)  # type: ignore[operator]
        raw[rule.category] = raw.get(rule.category, 0.0) + most
    for fit_rule in model.fit.rules:
        if fit_rule.points > 0:
            raw[fit_rule.category] = raw.get(fit_rule.category, 0.0) + fit_rule.points
    out = {}
    for name, spec in model.categories.items():
        weighted = spec.weight * raw.get(name, 0.0)
        out[name] = weighted if spec.cap is None else min(weighted, spec.cap)
    return out


def _stages(model: ScoringModel) -> Iterator[Finding]:
    most = max_score(model)
    best_fit = sum(r.points for r in model.fit.rules if r.points > 0)
    # A bound of the model, not a lead's grade (lib.lua grades leads): the letter the best fit reaches.
    best_grade = next((g for g, need in sorted(model.fit.grades.items(), key=lambda x: -x[1]) if best_fit >= need), "D")
    needs: dict[str, float] = {letter: points for letter, points in model.fit.grades.items()}
    for i, stage in enumerate(model.stages[1:], 1):
        if stage.min_score > most:
            yield Finding(f"stages[{i}].min_score", f"no lead can reach {stage.name}: min_score {stage.min_score:g} is "
                          f"above the most a lead can score, {most:.6g} (every positive rule at its cap)")
        yield from _conditions(model, i)
        if stage.min_grade is not None and GRADES.index(best_grade) > GRADES.index(stage.min_grade):
            yield Finding(f"stages[{i}].min_grade", f"no lead can reach {stage.name}: grade {stage.min_grade} needs "
                          f"{needs[stage.min_grade]:g} fit points, and all positive fit rules "
                          f"together give {best_fit:g} (grade {best_grade})")


def _conditions(model: ScoringModel, i: int) -> Iterator[Finding]:
    """Stage conditions (docs/scoring.md §5) that cannot be met, or that do not mean what they say."""
    stage = model.stages[i]
    if stage.min_points is not None:
        where = f"stages[{i}].min_points"
        fed_by_fit = sorted({r.category for r in model.fit.rules} & set(stage.min_points.from_))
        if fed_by_fit:
            yield Finding(f"{where}.from", f"{', '.join(fed_by_fit)} holds fit points, so fit alone counts toward "
                          f"min_points (list the categories of behaviour and engagement only)")
        most = most_by_category(model)
        reach = sum(most[c] for c in stage.min_points.from_)
        if reach < stage.min_points.points:
            yield Finding(f"{where}.points", f"no lead can reach {stage.name}: {', '.join(stage.min_points.from_)} "
                          f"give at most {reach:.6g} points, under {stage.min_points.points:g}")
    if stage.min_completeness is not None and not model.fit.traits:
        yield Finding(f"stages[{i}].min_completeness", "the model has no fit rules, so every lead is complete: "
                      "the condition always holds")
