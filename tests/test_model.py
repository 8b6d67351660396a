from __future__ import annotations

import math
from typing import Any

import pytest

from leadpulse.errors import ModelError
from leadpulse.model import Cap, IdleDecay, load_model, parse_model

BASE = """
version: t1
categories: {behavioral: {half_life: 7d}, fit: {}}
rules:
  - {id: pricing, category: behavioral, points: 25, when: {source: web, type: page_view, url: {glob: "*/pricing*"}}}
stages: [{name: lead, min_score: 0}, {name: mql, min_score: 50, handoff: true}]
"""


def test_default_model_loads_with_the_fields_values() -> None:
    model = load_model()
    points = {r.id: r.points for r in model.rules}
    assert points["pricing_page"] == 25
    assert points["demo_request"] == 50
    assert points["competitor_comparison"] == 35
    assert points["unsubscribe"] < 0
    assert [s.name for s in model.stages] == ["lead", "mql", "sql"]
    assert model.version


def test_idle_rule_maps_to_the_half_life_that_loses_that_much() -> None:
    decay = IdleDecay(lose_percent=15, after="30d")
    remaining = 2 ** (-(30 * 86_400_000) / decay.half_life_ms)
    assert math.isclose(remaining, 0.85, rel_tol=1e-12)


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (("url: {glob:", "url: {blob:"), "rules[0].when.url.blob"),
        (("points: 25", "points: lots"), "rules[0].points"),
        (("category: behavioral, points", "category: nope, points"), "rules[0].category"),
        (("source: web", "source: fax"), "rules[0].when.source"),
        (("half_life: 7d", "half_life: soon"), "categories.behavioral.half_life"),
        (("min_score: 50", "min_score: -5"), "stages[1].min_score"),
        (("{name: lead,", "{nam: lead,"), "stages[0].nam"),
    ],
)
def test_bad_keys_are_reported_by_path(change: tuple[str, str], path: str) -> None:
    with pytest.raises(ModelError) as info:
        parse_model(BASE.replace(*change), "m.yaml")
    assert str(info.value).startswith(f"m.yaml: {path}: "), str(info.value)


def test_max_event_age_defaults_to_30_days_and_null_turns_it_off() -> None:
    assert load_model().max_event_age == parse_model(BASE).max_event_age == 30 * 86_400_000
    assert parse_model(BASE + "max_event_age: 90d\n").max_event_age == 90 * 86_400_000
    assert parse_model(BASE + "max_event_age: null\n").max_event_age is None
    for bad in ("0", "soon"):
        with pytest.raises(ModelError, match="max_event_age"):
            parse_model(BASE + f"max_event_age: {bad}\n")


def test_regex_that_does_not_compile_is_reported() -> None:
    with pytest.raises(ModelError, match=r"rules\[0\]\.when\.url: .*regex does not compile"):
        parse_model(BASE.replace('{glob: "*/pricing*"}', '{regex: "(unclosed"}'))


def test_duplicate_keys_and_yaml_errors_are_one_line() -> None:
    with pytest.raises(ModelError, match="duplicate key 'version'"):
        parse_model(BASE + "version: t2\n")
    with pytest.raises(ModelError, match="not valid YAML") as info:
        parse_model("version: [unclosed")
    assert "\n" not in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelError, match="cannot read the model"):
        load_model(tmp_path / "nope.yaml")


def test_models_are_frozen() -> None:
    model = parse_model(BASE)
    with pytest.raises(Exception):
        model.rules[0].points = 1  # type: ignore[misc]


def test_once_is_for_life_or_renews_after_a_period() -> None:
    def rule(once: str) -> Any:
        return parse_model(BASE.replace("points: 25,", f"points: 25, once: {once},")).rules[0]

    assert rule("true").effective_cap == Cap(points=25, window=None) and rule("true").renewal_ms is None
    renewing = rule("90d")
    assert renewing.renewal_ms == 90 * 86_400_000
    # the renewal is a window cap of the rule's own points over the period (lua/lib.lua `award`)
    assert renewing.effective_cap == Cap(points=25, window="90d")
    assert rule("false").effective_cap is None
    for bad, reason in [("1", "a renewal period with a unit such as 90d"), ("0d", "must be > 0"),
                        ("soon", "not a duration"), ("[1]", "a renewal period")]:
        with pytest.raises(ModelError, match=rf"rules\[0\]\.once: .*{reason}"):
            rule(bad)
    with pytest.raises(ModelError, match="use either cap or once"):
        parse_model(BASE.replace("points: 25,", "points: 25, once: 30d, cap: {points: 50},"))


def test_custom_fields_are_checked_like_the_rest() -> None:
    model = parse_model(BASE + "custom_fields: {traits: [plan], properties: {web: [utm_source]}}\n")
    assert model.custom_fields.traits == ("plan",) and model.custom_fields.properties == {"web": ("utm_source",)}
    with pytest.raises(ModelError, match=r"custom_fields\.properties\.fax"):
        parse_model(BASE + "custom_fields: {properties: {fax: [x]}}\n")
    with pytest.raises(ModelError, match=r"custom_fields\.trait"):
        parse_model(BASE + "custom_fields: {trait: [plan]}\n")
