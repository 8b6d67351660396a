"""Pure scoring: which rules an event matches, and fit from traits.

No I/O here. This module decides what to add; the scripts (lua/lib.lua, through `state.py`) keep
the running sums in Redis and compute every score, grade, stage and explanation from them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .events import Event
from .model import GRADES, Predicate, ScoringModel, UrlPart
from .patterns import glob_matcher, regex_matcher
from .urls import url_host, url_path

Check = Callable[[Any], bool]
#: where a compiled check finds its value: a property or trait name, or (name, URL part) for
#: the part worked out once per event (`_with_url_parts`)
ValueKey = str | tuple[str, UrlPart]

#: strings `truthy` reads as "no", compared trimmed and case-folded (docs/scoring.md, Predicates)
FALSY_WORDS = frozenset({"", "false", "no", "n", "none", "null", "nil", "n/a", "na", "-", "off", "unknown"})


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


def truthy(value: Any) -> bool:
    """Whether a value says "yes": present and not false, 0, an empty list or object, or a
    string that reads as "no" (FALSY_WORDS, or a number equal to 0 like "0.00"). A list says
    yes when one of its items does."""
    if value is None or value is False:
        return False
    if isinstance(value, str):
        word = value.strip().casefold()
        return word not in FALSY_WORDS and _number(word) != 0
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, list):
        return any(truthy(item) for item in value)
    return bool(value)


#: answers a pattern keeps, and the longest value it keeps one for: at most 337 KB per pattern
#: (measured with tracemalloc, 1024 values of 256 characters), whatever the traffic
MEMO_ENTRIES = 1024
MEMO_VALUE_CHARS = 256


def _remembered(match: Callable[[str], bool]) -> Check:
    """A pattern's check on strings, remembering its answers: a call into RE2 costs about a
    microsecond, and the values it sees repeat (a site has a few hundred paths; normalised,
    every utm-tagged visit of /pricing is the same string). Full, the memo starts afresh."""
    memo: dict[str, bool] = {}

    def check(value: Any) -> bool:
        if not isinstance(value, str):
            return False
        hit = memo.get(value)
        if hit is None:
            hit = match(value)
            if len(value) <= MEMO_VALUE_CHARS:
                if len(memo) >= MEMO_ENTRIES:
                    memo.clear()
                memo[value] = hit
        return hit

    return check


def _present(value: Any) -> bool:
    return value is not None and value != ""


def _known(value: Any) -> bool:
    return _present(value) and value != [] and value != {}


def _checks(pred: Predicate) -> list[Check]:
    checks: list[Check] = []
    if pred.exists is not None:
        want = pred.exists
        checks.append(lambda v: _present(v) is want)
    if pred.truthy is not None:
        want_yes = pred.truthy
        checks.append(lambda v: truthy(v) is want_yes)
    if pred.equals is not None:
        target = _fold(pred.equals)
        checks.append(lambda v: _fold(v) == target)
    if pred.in_ is not None:
        allowed = frozenset(_fold(x) for x in pred.in_)
        checks.append(lambda v: _fold(v) in allowed if isinstance(v, (str, int, float)) else False)
    if pred.not_in is not None:
        # "present and not one of these": missing, null and "" are not present (as for exists)
        banned = frozenset(_fold(x) for x in pred.not_in)
        checks.append(lambda v: isinstance(v, (str, int, float)) and v != "" and _fold(v) not in banned)
    if pred.contains is not None:
        needles = tuple(n.casefold() for n in pred.contains)
        if len(needles) == 1:
            needle = needles[0]
            checks.append(lambda v: isinstance(v, str) and needle in v.casefold())
        else:
            checks.append(lambda v: isinstance(v, str) and any(n in v.casefold() for n in needles))
    # linear-time matching of the first MATCH_LIMIT characters (patterns.py)
    if pred.regex is not None:
        checks.append(_remembered(regex_matcher(pred.regex)))
    if pred.glob is not None:
        checks.append(_remembered(glob_matcher(pred.glob)))
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


def _value_key(name: str, pred: Predicate) -> ValueKey:
    part = pred.url_part(name)
    return name if part == "full" else (name, part)


def url_parts(when: Mapping[str, Predicate]) -> frozenset[tuple[str, UrlPart]]:
    """The (property, part) pairs a rule's predicates read."""
    return frozenset(k for name, pred in when.items() if isinstance(k := _value_key(name, pred), tuple))


def _with_url_parts(values: Mapping[str, Any], parts: Iterable[tuple[str, UrlPart]]) -> dict[Any, Any]:
    """`values` plus each URL part asked for, worked out once for all the rules that read it.
    A value that is not a string stays what it is (no part to take)."""
    out: dict[Any, Any] = dict(values)
    for key in parts:
        name, part = key
        value = values.get(name)
        if isinstance(value, str):
            value = url_path(value) if part == "path" else url_host(value)
        out[key] = value
    return out


def _compile_when(when: Mapping[str, Predicate]) -> Callable[[Mapping[Any, Any]], bool] | None:
    """One function for a rule's conditions, None when it has none; the common shapes (one
    key, one test) become a single closure, since matching runs for every event. Predicates on
    a URL's part read it from the key (name, part) `_with_url_parts` adds. May raise
    TypeError/ValueError on odd JSON: the caller treats that as no match."""
    parts = [(_value_key(name, pred), _checks(pred)) for name, pred in when.items()]
    if not parts:
        return None
    if len(parts) == 1 and len(parts[0][1]) == 1:
        (key, [check]), = parts
        return lambda values: check(values.get(key))
    flat = [(key, check) for key, checks in parts for check in checks]
    return lambda values: all(check(values.get(key)) for key, check in flat)


def _holds(check: Callable[[Mapping[Any, Any]], bool] | None, values: Mapping[Any, Any]) -> bool:
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
_Compiled = tuple[tuple[str, float], Callable[[Mapping[Any, Any]], bool] | None]
#: the rules one (source, type) runs, and the URL parts they read
_Kind = tuple[list[_Compiled], tuple[tuple[str, UrlPart], ...]]


class Scorer:
    """The model compiled for the hot path: rules indexed by (source, type)."""

    def __init__(self, model: ScoringModel) -> None:
        self.model = model
        self._by_kind: dict[tuple[str, str | None], list[tuple[_Compiled, frozenset[tuple[str, UrlPart]]]]] = {}
        for rule in model.rules:
            compiled = ((rule.id, rule.points), _compile_when(rule.when.properties)), url_parts(rule.when.properties)
            for kind in rule.when.type or (None,):
                self._by_kind.setdefault((rule.when.source, kind), []).append(compiled)
        #: per (source, type) seen: the rules of that type, then those of any type of the source
        self._merged: dict[tuple[str, str], _Kind] = {}
        #: per (source, type) seen: the property names its rules read (match_key)
        self._reads: dict[tuple[str, str], tuple[str, ...]] = {}
        self._fit = [(r, _compile_when(r.when)) for r in model.fit.rules]
        self._fit_parts = tuple(frozenset().union(*(url_parts(r.when) for r in model.fit.rules)))
        #: the trait names fit rules read: only these are kept in Redis (email_domain is derived)
        self.fit_traits = frozenset({"email"} | {k for r in model.fit.rules for k in r.when}) - {"email_domain"}

    def _rules_for(self, source: str, type_: str) -> _Kind:
        kind = self._merged.get((source, type_))
        if kind is None:
            # (source, type) pairs are closed by the event schema, so this stays small.
            both = [*self._by_kind.get((source, type_), ()), *self._by_kind.get((source, None), ())]
            parts = frozenset().union(*(p for _, p in both))
            kind = self._merged[(source, type_)] = ([c for c, _ in both], tuple(sorted(parts)))
        return kind

    def match_key(self, event: Event) -> tuple[Any, ...] | None:
        """A key that decides `matched(event)`: its source and type and the values of the
        properties its rules read, or None when one of them is neither a string nor missing.

        Rules are pure functions of those values (`_compile_when` reads nothing else), so equal
        keys match the same rules: the worker remembers the answer per key. Only strings and
        None: 1, 1.0 and True are equal as keys but not to every predicate."""
        source, type_ = event.source, event.type
        names = self._reads.get((source, type_))
        if names is None:
            names = self._reads[(source, type_)] = tuple(sorted(
                {name for rule in self.model.rules if rule.when.source == source
                 and (not rule.when.type or type_ in rule.when.type) for name in rule.when.properties}))
        if not names:
            return (source, type_)
        props = event.properties
        values = [props.get(name) for name in names]
        for value in values:
            if value is not None and type(value) is not str:
                return None
        return (source, type_, *values)

    def matched(self, event: Event) -> list[tuple[str, float]]:
        """(rule id, points) of every rule the event matches (the hot path's form)."""
        rules, parts = self._rules_for(event.source, event.type)
        props: Mapping[Any, Any] = _with_url_parts(event.properties, parts) if parts else event.properties
        out = []
        for pair, check in rules:
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
        values: Mapping[Any, Any] = derived_traits(traits)
        if self._fit_parts:
            values = _with_url_parts(values, self._fit_parts)
        return {rule.id: rule.points for rule, check in self._fit if _holds(check, values)}

    def known(self, traits: Mapping[str, Any]) -> int:
        """How many of the traits the fit rules read (model.Fit.traits) hold a value: the count
        completeness is taken from (lib.lua). Empty strings, lists and objects are not known."""
        values = derived_traits(traits)
        return sum(1 for name in self.model.fit.traits if _known(values.get(name)))

    def kept_traits(self, traits: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in traits.items() if k in self.fit_traits}


def grade_rank(letter: str | None) -> int:
    """A=3 … D=0, so that "at least grade X" is a comparison."""
    return 0 if letter is None else len(GRADES) - 1 - GRADES.index(letter)

