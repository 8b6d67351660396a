"""The predicate table of docs/scoring.md, row by row: what each operator holds for."""

from __future__ import annotations

from typing import Any

import pytest

from leadpulse.engine import FALSY_WORDS, Scorer, truthy
from leadpulse.errors import ModelError
from leadpulse.events import Event
from leadpulse.model import parse_model

MISSING = object()

MODEL = """
version: predicates
categories: {b: {}}
rules:
  - {id: r, category: b, points: 1, when: {source: web, type: form_submit, NAME: PREDICATE}}
fit:
  rules:
    - {id: f, category: b, points: 1, when: {NAME: PREDICATE}}
stages: [{name: lead, min_score: 0}, {name: mql, min_score: 50}]
"""


def holds(predicate: str, value: Any, name: str = "x") -> bool:
    """Whether the predicate holds for the value as an event property, checked to hold the same
    for it as a trait (one compiler, two doors)."""
    scorer = Scorer(parse_model(MODEL.replace("NAME", name).replace("PREDICATE", predicate)))
    values = {} if value is MISSING else {name: value}
    as_property = scorer.matched(Event("e", "web", "form_submit", 0, "l", None, values, {})) == [("r", 1.0)]
    assert (scorer.fit(values) == {"f": 1.0}) is as_property
    return as_property


TABLE = [
    # equals: case-folded, not trimmed
    ("VP", "vp", True), ("VP", "Vp ", False), ("VP", MISSING, False),
    ("{equals: true}", 1, True),  # Python's 1 == True
    # in: case-folded; a list or object value never is in
    ("[marketing, sales]", "Sales", True), ("[marketing, sales]", "hr", False), ("[marketing, sales]", ["sales"], False),
    ("[marketing, sales]", MISSING, False),
    # not_in: present and not listed; missing, null, "" and lists are not present
    ("{not_in: [gmail.com]}", "acme.io", True), ("{not_in: [gmail.com]}", "GMAIL.COM", False),
    ("{not_in: [gmail.com]}", MISSING, False), ("{not_in: [gmail.com]}", None, False),
    ("{not_in: [gmail.com]}", "", False), ("{not_in: [gmail.com]}", ["acme.io"], False),
    ("{not_in: [0]}", 5, True),
    # contains: one string or any of a list, case-insensitive
    ("{contains: Pricing}", "…/PRICING", True), ("{contains: [trial, demo]}", "Book a DEMO", True),
    ("{contains: [trial, demo]}", "pricing", False), ("{contains: x}", 5, False),
    # regex: case-sensitive search unless (?i)
    ('{regex: "/pricing"}', "…/PRICING", False), ('{regex: "(?i)/pricing"}', "…/PRICING", True),
    # glob: whole value, case-insensitive, * crosses /; a list: any of them
    ('{glob: "*/pricing*"}', "https://x.io/Pricing?x=1", True), ('{glob: "*/pricing*"}', "pricing", False),
    ("{glob: [/a, /b/*]}", "/B/c", True), ("{glob: [/a, /b/*]}", "/b", False),
    # numeric bounds: numbers and numeric strings, not bools
    ("{gte: 30}", 30, True), ("{gte: 30}", "30", True), ("{gte: 30}", " 45 ", True), ("{gte: 30}", "1,200", True),
    ("{gte: 30}", "30 min", False), ("{gte: 30}", True, False), ("{gte: 30}", MISSING, False),
    # exists: not missing, null or ""
    ("{exists: true}", 0, True), ("{exists: true}", False, True), ("{exists: true}", "", False),
    ("{exists: true}", None, False), ("{exists: false}", MISSING, True), ("{exists: true}", "none", True),
    # truthy: says "yes"
    ("{truthy: true}", "approved", True), ("{truthy: true}", "$50k", True), ("{truthy: true}", 50000, True),
    ("{truthy: true}", True, True), ("{truthy: true}", "yes", True), ("{truthy: true}", ["", "q3"], True),
    ("{truthy: true}", "None", False), ("{truthy: true}", "  N/A ", False), ("{truthy: true}", "0.00", False),
    ("{truthy: true}", 0, False), ("{truthy: true}", False, False), ("{truthy: true}", None, False),
    ("{truthy: true}", MISSING, False), ("{truthy: true}", [], False), ("{truthy: true}", ["no", ""], False),
    ("{truthy: false}", "no", True), ("{truthy: false}", MISSING, True), ("{truthy: false}", "q3", False),
    # operators together: all must hold
    ("{exists: true, not_in: [none]}", "None", False), ("{gte: 10, lt: 20}", "15", True),
]


@pytest.mark.parametrize(("predicate", "value", "expected"), TABLE)
def test_the_documented_table(predicate: str, value: Any, expected: bool) -> None:
    assert holds(predicate, value) is expected


@pytest.mark.parametrize("word", sorted(FALSY_WORDS))
def test_every_word_that_means_no_is_falsy_in_any_case_and_padding(word: str) -> None:
    assert not truthy(word) and not truthy(f"  {word.upper()}\t")
    assert truthy(f"{word}x")  # only the whole value counts


def test_a_predicate_needs_an_operator_and_part_is_not_one() -> None:
    with pytest.raises(ModelError, match="needs at least one operator"):
        parse_model(MODEL.replace("NAME", "url").replace("PREDICATE", "{part: host}"))
    with pytest.raises(ModelError, match=r"rules\[0\]\.when\.url\.part"):
        parse_model(MODEL.replace("NAME", "url").replace("PREDICATE", "{part: query, equals: x}"))
    with pytest.raises(ModelError, match=r"rules\[0\]\.when\.x\.glob"):
        parse_model(MODEL.replace("NAME", "x").replace("PREDICATE", "{glob: []}"))
