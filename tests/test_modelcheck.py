"""`check-model` warns about what loads but cannot work as written; `--strict` fails on it."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from leadpulse import events
from leadpulse.collector import segment
from leadpulse.cli import main
from leadpulse.model import load_model, parse_model
from leadpulse.modelcheck import findings, max_score

BASE = """
version: check
categories: {b: {half_life: 7d}, flat: {}, fit: {}}
rules:
RULES
fit:
  grades: {A: 30, B: 20, C: 10}
  rules:
FIT
stages: [{name: lead, min_score: 0}, {name: mql, min_score: 50}]
"""


def model(rules: str = "", fit: str = "", tail: str = "") -> str:
    return BASE.replace("RULES", rules or "  - {id: d, category: flat, points: 5, once: true, when: {source: web, type: demo_request}}"
                        ).replace("FIT", fit or "    - {id: vp, category: fit, points: 20, when: {seniority: vp}}") + tail


def lines(text: str) -> list[str]:
    return [str(f) for f in findings(parse_model(text))]


def test_the_default_model_has_nothing_to_warn_about() -> None:
    assert findings(load_model()) == []
    result = CliRunner().invoke(main, ["check-model", "--strict"])
    assert result.exit_code == 0 and result.output.startswith("ok: model default-"), result.output


def test_a_type_no_event_of_the_source_has() -> None:
    text = model("  - {id: p, category: b, points: 1, when: {source: web, type: [page_view, pageview]}}\n"
                 "  - {id: o, category: b, points: 1, when: {source: email, type: opened}}")
    assert lines(text) == [
        "rules[0].when.type: 'pageview' is not a web event type, so the rule never fires "
        "(web types: page_view, form_submit, demo_request, content_download); did you mean 'page_view'?",
        "rules[1].when.type: 'opened' is not a email event type, so the rule never fires "
        "(email types: delivered, open, click, reply, bounce, unsubscribe, spam_report); did you mean 'open'?",
    ]


def test_the_types_are_the_contracts_one_list() -> None:
    assert segment.EVENT_TYPES is events.EVENT_TYPES
    assert events.EVENT_TYPES["webinar"] == ("registered", "attended", "no_show", "question_asked")
    assert events.EVENT_PROPERTIES["web"] == {"url", "title", "referrer", "asset"}
    assert "budget" in events.KNOWN_TRAITS and "email_domain" not in events.KNOWN_TRAITS


def test_properties_and_traits_outside_the_contract_unless_declared() -> None:
    text = model("  - {id: u, category: b, points: 1, when: {source: web, type: page_view, utm_source: google}}\n"
                 "  - {id: m, category: b, points: 1, when: {source: webinar, type: attended, minute: {gte: 30}}}",
                 "    - {id: s, category: fit, points: 20, when: {senority: vp}}\n"
                 "    - {id: p, category: fit, points: 5, when: {plan: enterprise}}\n"
                 "    - {id: g, category: fit, points: -5, when: {email_domain: gmail.com}}")
    assert lines(text) == [
        "rules[0].when.utm_source: web events define no property 'utm_source' (defined: asset, referrer, title, url); "
        "the rule matches only events that send it (declare it under custom_fields.properties.web)",
        "rules[1].when.minute: webinar events define no property 'minute' (defined: minutes, webinar_id); "
        "the rule matches only events that send it (declare it under custom_fields.properties.webinar); "
        "did you mean 'minutes'?",
        "fit.rules[0].when.senority: 'senority' is not a trait of the event contract nor a declared custom trait "
        "(custom_fields.traits), so no identify is likely to carry it; did you mean 'seniority'?",
        "fit.rules[1].when.plan: 'plan' is not a trait of the event contract nor a declared custom trait "
        "(custom_fields.traits), so no identify is likely to carry it",
    ]
    declared = text + "custom_fields: {traits: [plan], properties: {web: [utm_source]}}\n"
    assert [line.split(":")[0] for line in lines(declared)] == ["rules[1].when.minute", "fit.rules[0].when.senority"]


def test_url_operands_the_path_or_host_can_never_equal() -> None:
    text = model(
        "  - {id: a, category: b, points: 1, when: {source: web, type: page_view, url: {glob: 'https://acme.io/pricing*'}}}\n"
        "  - {id: c, category: b, points: 1, when: {source: web, type: page_view, url: {contains: '?utm_source=g'}}}\n"
        "  - {id: e, category: b, points: 1, when: {source: web, type: page_view, url: {in: [/pricing/, /plans]}}}\n"
        "  - {id: f, category: b, points: 1, when: {source: web, type: page_view, referrer: {part: host, equals: g2.com/x}}}\n"
        "  - {id: ok, category: b, points: 1, when: {source: web, type: page_view, url: {part: full, contains: '?utm_source=g'},"
        " referrer: {glob: '/*'}}}")
    assert lines(text) == [
        "rules[0].when.url: glob 'https://acme.io/pricing*' looks like a full URL, but url is matched on its path "
        "(write the path, e.g. '/pricing', or add part: full)",
        "rules[1].when.url: contains '?utm_source=g' holds a query or fragment, which the path of url never does "
        "(add part: full to match the whole URL)",
        "rules[2].when.url: in '/pricing/' ends with '/', but paths are compared without their trailing slash "
        "(write '/pricing')",
        "rules[3].when.referrer: equals 'g2.com/x' holds a '/', which the host of referrer never does",
    ]


def test_the_most_a_lead_can_score_and_stages_out_of_reach() -> None:
    # once 50 (flat) + a 7-day window cap of 10 at a 7-day half-life: 10 / (1 - 2^-1) = 20 at
    # most at any instant + fit 20 + 5 (a negative rule adds nothing)
    rules = ("  - {id: d, category: flat, points: 50, once: true, when: {source: web, type: demo_request}}\n"
             "  - {id: o, category: b, points: 4, cap: {points: 10, window: 7d}, when: {source: email, type: open}}\n"
             "  - {id: u, category: flat, points: -30, when: {source: email, type: unsubscribe}}")
    fit = ("    - {id: vp, category: fit, points: 20, when: {seniority: vp}}\n"
           "    - {id: big, category: fit, points: 5, when: {employees: {gte: 500}}}")
    text = model(rules, fit)
    assert max_score(parse_model(text)) == pytest.approx(95, rel=1e-12)
    assert lines(text.replace("min_score: 50}", "min_score: 95}")) == []
    assert lines(text.replace("min_score: 50}", "min_score: 95.5}")) == [
        "stages[1].min_score: no lead can reach mql: min_score 95.5 is above the most a lead can score, 95 "
        "(every positive rule at its cap)"]
    # a category cap and weight bound it too; a rule without a cap (or a window cap without
    # decay) leaves the score unbounded
    assert max_score(parse_model(text.replace("flat: {}", "flat: {weight: 2, cap: 60}"))) == pytest.approx(105)
    assert max_score(parse_model(text.replace("points: 50, once: true,", "points: 50,"))) == float("inf")
    assert max_score(parse_model(text.replace("once: true", "once: 90d"))) == float("inf")  # renews, never fades
    assert max_score(parse_model(text.replace("b: {half_life: 7d}", "b: {}"))) == float("inf")
    # the grade: all positive fit rules give 25 (grade B)
    assert lines(text.replace("min_score: 50}", "min_score: 50, min_grade: A}")) == [
        "stages[1].min_grade: no lead can reach mql: grade A needs 30 fit points, and all positive fit rules "
        "together give 25 (grade B)"]


def test_check_model_warns_and_strict_fails_one_line_per_problem(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(model("  - {id: p, category: b, points: 1, when: {source: web, type: pageview}}",
                          "    - {id: s, category: fit, points: 20, when: {senority: vp}}"))
    result = CliRunner().invoke(main, ["check-model", str(path)])
    assert result.exit_code == 0
    assert result.stderr.splitlines() == [
        f"warning: {path}: rules[0].when.type: 'pageview' is not a web event type, so the rule never fires "
        "(web types: page_view, form_submit, demo_request, content_download); did you mean 'page_view'?",
        f"warning: {path}: fit.rules[0].when.senority: 'senority' is not a trait of the event contract nor a "
        "declared custom trait (custom_fields.traits), so no identify is likely to carry it; did you mean 'seniority'?",
    ]
    assert result.stdout == "ok: model check: 1 engagement rules, 1 fit rules, stages lead≥0 → mql≥50 (2 warnings)\n"
    strict = CliRunner().invoke(main, ["check-model", "--strict", str(path)])
    assert strict.exit_code == 1
    assert strict.stderr == result.stderr and strict.stdout == ""
    broken = tmp_path / "broken.yaml"
    broken.write_text(model().replace("points: 5", "points: lots"))
    failed = CliRunner().invoke(main, ["check-model", "--strict", str(broken)])
    assert failed.exit_code == 2 and failed.stderr.startswith(f"leadpulse: {broken}: rules[0].points: ")
