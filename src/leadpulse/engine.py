"""Pure scoring: which rules an event matches, and fit from traits.

No I/O here. This module decides what to add; the scripts (lua/lib.lua, through `state.py`) keep
the running sums in Redis and compute every score, grade, stage and explanation from them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .events import Event
from .model import GRADES, Predicate, ScoringModel
from .patterns import glob_matcher, regex_matcher

Check = Callable[[Any], bool]


def _fold(value: Any) -> Any:
    return value.casefold() if isinstance(value, str) else value


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.replace(",", ""))
        except ValueError:
            return None
    return None


def _checks(pred: Predicate) -> list[Check]:
    checks: list[Check] = []
    if pred.exists is not None:
        want = pred.exists
        checks.append(lambda v: (v is not None and v != "") is want)
    if pred.equals is not None:
        target = _fold(pred.equals)
        checks.append(lambda v: _fold(v) == target)
    if pred.in_ is not None:
        allowed = frozenset(_fold(x) for x in pred.in_)
        checks.append(lambda v: _fold(v) in allowed if isinstance(v, (str, int, float)) else False)
    if pred.not_in is not None:
        banned = frozenset(_fold(x) for x in pred.not_in)
        checks.append(lambda v: isinstance(v, (str, int, float)) and _fold(v) not in banned)
    if pred.contains is not None:
        needle = pred.contains.casefold()
        checks.append(lambda v: isinstance(v, str) and needle in v.casefold())
    # linear-time matching of the first MATCH_LIMIT characters (patterns.py)
    if pred.regex is not None:
        search = regex_matcher(pred.regex)
        checks.append(lambda v: isinstance(v, str) and search(v))
    if pred.glob is not None:
        match = glob_matcher(pred.glob)
        checks.append(lambda v: isinstance(v, str) and match(v))
    bounds = [(b, op) for b, op in ((pred.gte, ">="), (pred.gt, ">"), (pred.lte, "<="), (pred.lt, "<")) if b is not None]
    if bounds:
        def in_range(v: Any) -> bool:
            n = _number(v)
            if n is None:
                return False
            for bound, op in bounds:
                if not {">=": n >= bound, ">": n > bound, "<=": n <= bound, "<": n < bound}[op]:
                    return False
            return True

        checks.append(in_range)
    return checks


def _compile_when(when: Mapping[str, Predicate]) -> Callable[[Mapping[str, Any]], bool] | None:
    """One function for a rule's conditions, None when it has none; the common shapes (one
    key, one test) become a single closure, since matching runs for every event. May raise
    TypeError/ValueError on odd JSON: the caller treats that as no match."""
    parts = [(key, _checks(pred)) for key, pred in when.items()]
    if not parts:
        return None
    if len(parts) == 1 and len(parts[0][1]) == 1:
        (key, [check]), = parts
        return lambda values: check(values.get(key))
    flat = [(key, check) for key, checks in parts for check in checks]
    return lambda values: all(check(values.get(key)) for key, check in flat)


def _holds(check: Callable[[Mapping[str, Any]], bool] | None, values: Mapping[str, Any]) -> bool:
    if check is None:
        return True
    try:
        return check(values)
    except (TypeError, ValueError):
        return False


def derived_traits(traits: Mapping[str, Any]) -> dict[str, Any]:
    """Traits the fit rules may use besides the ones sent: `email_domain`, from `email` only.
    A sent `email_domain` is ignored: beside a gmail address it would dodge a personal-email rule."""
    out = {k: v for k, v in traits.items() if k != "email_domain"}
    email = traits.get("email")
    if isinstance(email, str) and "@" in email:
        out["email_domain"] = email.rsplit("@", 1)[1].strip().casefold()
    return out


#: a compiled rule: ((rule id, points), its conditions or None)
_Compiled = tuple[tuple[str, float], Callable[[Mapping[str, Any]], bool] | None]


class Scorer:
    """The model compiled for the hot path: rules indexed by (source, type)."""

    def __init__(self, model: ScoringModel) -> None:
        self.model = model
        self._by_kind: dict[tuple[str, str | None], list[_Compiled]] = {}
        for rule in model.rules:
            check = _compile_when(rule.when.properties)
            for kind in rule.when.type or (None,):
                self._by_kind.setdefault((rule.when.source, kind), []).append(((rule.id, rule.points), check))
        #: per (source, type) seen: the rules of that type, then those of any type of the source
        self._merged: dict[tuple[str, str], list[_Compiled]] = {}
        self._fit = [(r, _compile_when(r.when)) for r in model.fit.rules]
        #: the trait names fit rules read: only these are kept in Redis (email_domain is derived)
        self.fit_traits = frozenset({"email"} | {k for r in model.fit.rules for k in r.when}) - {"email_domain"}

    def _rules_for(self, source: str, type_: str) -> list[_Compiled]:
        rules = self._merged.get((source, type_))
        if rules is None:
            # (source, type) pairs are closed by the event schema, so this stays small.
            rules = [*self._by_kind.get((source, type_), ()), *self._by_kind.get((source, None), ())]
            self._merged[(source, type_)] = rules
        return rules

    def matched(self, event: Event) -> list[tuple[str, float]]:
        """(rule id, points) of every rule the event matches (the hot path's form)."""
        props = event.properties
        out = []
        for pair, check in self._rules_for(event.source, event.type):
            if check is None:
                out.append(pair)
                continue
            try:
                if check(props):
                    out.append(pair)
            except (TypeError, ValueError):  # odd JSON where a string was expected: no match
                pass
        return out

    def fit(self, traits: Mapping[str, Any]) -> dict[str, float]:
        values = derived_traits(traits)
        return {rule.id: rule.points for rule, check in self._fit if _holds(check, values)}

    def kept_traits(self, traits: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in traits.items() if k in self.fit_traits}


def grade_rank(letter: str | None) -> int:
    """A=3 … D=0, so that "at least grade X" is a comparison."""
    return 0 if letter is None else len(GRADES) - 1 - GRADES.index(letter)

