"""opparts: the parts of an apply.lua op built for the hot path answer exactly what the plain
computation does — the remembered rule matches, the dedup member."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from leadpulse.dev.simulate import journeys
from leadpulse.engine import Scorer
from leadpulse.events import Event
from leadpulse.model import ScoringModel, parse_model
from leadpulse.opparts import MATCH_CACHE, Matches, dedup_member

MODEL = """
version: shapes
categories: {b: {}}
rules:
  - {id: one, category: b, points: 1, when: {source: web, type: form_submit, n: {equals: 1}}}
  - {id: truth, category: b, points: 2, when: {source: web, type: form_submit, n: {truthy: true}}}
  - {id: big, category: b, points: 4, when: {source: web, type: form_submit, n: {gte: 1}}}
  - {id: demo, category: b, points: 8, when: {source: web, url: {glob: "*/demo*"}}}
  - {id: any, category: b, points: 16, when: {source: email, type: open}}
stages: [{name: lead, min_score: 0}, {name: mql, min_score: 50}]
"""


def _plain(scorer: Scorer, codes: dict[str, int], event: Event) -> list[Any]:
    return [x for rule_id, points in scorer.matched(event) for x in (codes[rule_id], points)]


def _event(type_: str, props: dict[str, Any], source: str = "web") -> Event:
    return Event("e", source, type_, 0, "l", None, props, {})


def test_equal_keys_of_other_types_are_not_confused() -> None:
    scorer = Scorer(parse_model(MODEL))
    codes = {"one": 1, "truth": 2, "big": 3, "demo": 4, "any": 5}
    matches = Matches()
    values = [1, True, 1.0, "1", None, 0, False, "", "true", 2]
    for _ in range(2):  # the second round reads what the first remembered
        for n in values:
            event = _event("form_submit", {"n": n, "url": "https://a.io/demo"})
            assert matches.of(event, scorer, codes) == _plain(scorer, codes, event), n
    assert matches.of(_event("open", {}, "email"), scorer, codes) == [5, 16.0]


def test_new_codes_are_not_answered_with_the_old_ones() -> None:
    scorer = Scorer(parse_model(MODEL))
    matches = Matches()
    event = _event("page_view", {"url": "https://a.io/demo"})
    assert matches.of(event, scorer, {"one": 1, "truth": 2, "big": 3, "demo": 4, "any": 5}) == [4, 8.0]
    assert matches.of(event, scorer, {"one": 1, "truth": 2, "big": 3, "demo": 9, "any": 5}) == [9, 8.0]


def test_the_default_model_on_simulated_journeys(model: ScoringModel) -> None:
    scorer = Scorer(model)
    codes = {r.id: i for i, r in enumerate(model.rules, 1)}
    matches = Matches()
    seen = 0
    for raw in journeys(300, seed=3, start_ms=0):
        event = Event(raw["event_id"], raw["source"], raw["type"], raw["occurred_at"], raw.get("lead_id"),
                      raw.get("anonymous_id"), raw.get("properties") or {}, raw.get("traits") or {})
        assert matches.of(event, scorer, codes) == _plain(scorer, codes, event)
        seen += 1
    assert seen > 1000 and len(matches._known) < MATCH_CACHE


@settings(max_examples=300)
@given(st.text(max_size=40))
def test_dedup_member_is_urlsafe_base64_of_blake2b(event_id: str) -> None:
    try:
        digest = hashlib.blake2b(event_id.encode(), digest_size=8).digest()
    except UnicodeEncodeError:  # a lone surrogate: never in a parsed event (orjson refuses it)
        return
    assert dedup_member(event_id) == base64.urlsafe_b64encode(digest)[:11].decode()
