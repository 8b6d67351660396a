"""Stages mean what a marketer means (issue 13): engagement conditions, unknown fit vs bad fit,
completeness — decided by lib.lua on a real redis-server, shown on reads and handoffs."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import jsonschema
import orjson
import pytest
from redis.asyncio import Redis

from leadpulse import handoff
from leadpulse.engine import Scorer
from leadpulse.errors import ModelError
from leadpulse.model import ScoringModel, load_model, parse_model
from leadpulse.state import LeadStore

from .support.fixtures import DAY, T0, event

#: a VP of marketing at a mid-size SaaS company with budget and a timeline: the default
#: model's whole fit (95 points), every fit trait known
VP: dict[str, Any] = {"seniority": "vp", "job_title": "VP Marketing", "department": "marketing", "employees": 200,
                      "industry": "saas", "annual_revenue": 20_000_000, "budget": "approved",
                      "timeline": "this_quarter", "email": "vp@acme.io"}


@pytest.fixture
def default() -> ScoringModel:
    return load_model()


def positions(events: list[Any]) -> list[tuple[Any, str]]:
    return [(e, f"t:0:{i}") for i, e in enumerate(events)]


async def fresh(redis: Redis, model: ScoringModel) -> LeadStore:
    await redis.flushdb()
    return LeadStore(redis, model)


async def test_fit_alone_makes_no_mql_and_fit_plus_a_reply_no_sql(redis: Redis, default: ScoringModel) -> None:
    store = await fresh(redis, default)
    done = await store.apply(positions([event("profile", "identify", T0, lead="vp", traits=VP)]))
    view = await store.view("vp", T0)
    assert view is not None and view.explanation.fit_score == 95 and view.explanation.score == 95
    assert done.transitions == [] and view.stage == "lead"  # 95 >= 60, but no engagement yet
    # One reply: 110 points, engagement 15 < 20 (no MQL) and no intent signal (no SQL).
    done = await store.apply(positions([event("email", "reply", T0 + 1000, lead="vp")]))
    view = await store.view("vp", T0 + 1000)
    assert view is not None and view.explanation.score == pytest.approx(110) and view.stage == "lead"
    assert done.transitions == []
    # Two clicks: engagement ~25, an MQL; still no intent, so no SQL at ~120 points.
    done = await store.apply(positions([event("email", "click", T0 + 2000 + k, lead="vp") for k in range(2)]))
    assert [(t.kind, t.to_stage) for t in done.transitions] == [("promoted", 1)]
    # A pricing page view: an intent signal, an SQL.
    done = await store.apply(positions([event("web", "page_view", T0 + 3000, lead="vp", url="/pricing")]))
    assert [(t.kind, t.to_stage) for t in done.transitions] == [("promoted", 2)]
    record = handoff.build(default, done.transitions[0])
    assert record["fit_grade"] == "A" and record["completeness"] == 1.0


async def test_engagement_conditions_are_the_way_in_not_a_reason_to_leave(redis: Redis, default: ScoringModel) -> None:
    # An SQL whose intent decays on stays while its score holds its floor (docs/scoring.md §5).
    store = await fresh(redis, default)
    await store.apply(positions([event("profile", "identify", T0, lead="x", traits=VP),
                                 event("web", "demo_request", T0 + 1, lead="x")]))
    view = await store.view("x", T0 + 1)
    assert view is not None and view.stage == "sql"
    done = await store.apply(positions([event("email", "open", T0 + 20 * DAY, lead="x")]))
    # 95 + 50·2^(-20/128) + 1 > 100 (floor): still an SQL; the one move is the sales SLA (2 d) passing
    assert [t.kind for t in done.transitions] == ["sla_overdue"]


async def test_unknown_fit_is_u_and_can_become_an_sql(redis: Redis, default: ScoringModel) -> None:
    store = await fresh(redis, default)
    intent = [event("web", "demo_request", T0, lead="anon-ish"),
              event("web", "page_view", T0 + 1, lead="anon-ish", url="/pricing?utm_source=g"),
              event("web", "page_view", T0 + 2, lead="anon-ish", url="/compare")]
    done = await store.apply(positions(intent))
    assert [t.to_stage for t in done.transitions] == [1, 2]  # 50 + 25 + 35 (+ page views' 2) >= 110
    why = done.transitions[1].explanation
    assert (why.fit_grade, why.completeness, why.fit_score) == ("U", 0.0, 0.0)
    record = handoff.build(default, done.transitions[1])
    schema = orjson.loads(files("leadpulse").joinpath("schemas/handoff.schema.json").read_text())
    jsonschema.validate(record, schema)
    assert record["fit_grade"] == "U" and record["completeness"] == 0.0


async def test_bad_fit_stays_d_and_cannot_become_an_sql(redis: Redis, default: ScoringModel) -> None:
    # A student at a 3-person company: two traits known, both against the lead: D, not U.
    store = await fresh(redis, default)
    student = {"industry": "student", "employees": 3}
    intent = [event("profile", "identify", T0, lead="st", traits=student),
              event("web", "demo_request", T0 + 1, lead="st"),
              *[event("web", "page_view", T0 + 2 + k, lead="st", url=u) for k, u in
                enumerate(["/pricing", "/pricing/teams", "/compare", "/customers/a", "/customers/b"])],
              event("webinar", "attended", T0 + 10, lead="st", minutes=45)]
    await store.apply(positions(intent))
    view = await store.view("st", T0 + 10)
    assert view is not None and view.explanation.fit_grade == "D"
    assert view.explanation.completeness == pytest.approx(2 / 9)
    assert view.explanation.score >= 110 and view.stage == "mql"  # min_grade C fails


async def test_completeness_is_shown_on_reads_and_top(redis: Redis, default: ScoringModel) -> None:
    store = await fresh(redis, default)
    some = {"seniority": "manager", "employees": 120, "email": "m@acme.io", "budget": ""}  # "" is not known
    await store.apply(positions([event("profile", "identify", T0, lead="m", traits=some),
                                 event("web", "demo_request", T0 + 1, lead="m")]))
    view = await store.view("m", T0 + 1)
    assert view is not None and view.explanation.completeness == pytest.approx(3 / 9)  # email_domain counts
    assert view.explanation.fit_grade == "C"  # 8 + 15: graded on what is known, being no D
    top = await store.top(5, T0 + 1)
    assert [(v.lead_id, v.explanation.completeness) for v in top] == [("m", view.explanation.completeness)]


MODEL = """
version: t
categories: {web: {}, fit: {}}
rules:
  - {id: visit, category: web, points: 10, when: {source: web, type: page_view}}
  - {id: demo, category: web, points: 50, intent: true, when: {source: web, type: demo_request}}
fit:
  grades: {A: 30, B: 20, C: 10}
  unknown_below: 0.5
  rules:
    - {id: vp, category: fit, points: 20, when: {seniority: vp}}
    - {id: icp, category: fit, points: 15, when: {employees: {gte: 50}}}
    - {id: saas, category: fit, points: 5, when: {industry: saas}}
    - {id: eu, category: fit, points: 1, when: {country: de}}
stages:
  - {name: lead, min_score: 0}
  - {name: mql, min_score: 30, min_completeness: 0.75, handoff: true}
"""


async def test_min_completeness_holds_to_enter_and_to_stay(redis: Redis) -> None:
    model = parse_model(MODEL)
    store = await fresh(redis, model)
    await store.apply(positions([event("profile", "identify", T0, lead="c", traits={"seniority": "vp", "employees": 80}),
                                 *[event("web", "page_view", T0 + k, lead="c") for k in range(1, 4)]]))
    view = await store.view("c", T0 + 3)
    assert view is not None and view.stage == "lead" and view.explanation.completeness == 0.5  # 65 points
    done = await store.apply(positions([event("profile", "identify", T0 + 4, lead="c", traits={"industry": "retail"})]))
    assert [t.to_stage for t in done.transitions] == [1]  # 3 of 4 known
    done = await store.apply(positions([event("profile", "identify", T0 + 5, lead="c", traits={"industry": None})]))
    assert [(t.kind, t.to_stage) for t in done.transitions] == [("demoted", 0)]


def test_known_counts_the_traits_fit_rules_read(default: ScoringModel) -> None:
    scorer = Scorer(default)
    assert default.fit.traits == ("seniority", "job_title", "department", "employees", "industry",
                                  "annual_revenue", "budget", "timeline", "email_domain")
    assert scorer.known({}) == 0
    assert scorer.known({"email": "a@b.io", "email_domain": "x.io"}) == 1  # derived from email only
    assert scorer.known({"seniority": "", "industry": [], "budget": "none", "employees": 0}) == 2
    assert scorer.known(VP) == 9


@pytest.mark.parametrize(("change", "message"), [
    ("min_points: {points: 20, from: [webb]}", "stages[1].min_points.from: unknown category 'webb'"),
    ("min_intent: 2", "stages[1].min_intent: the model has 1 rule(s) with intent: true, fewer than 2"),
    ("min_completeness: 1.5", "stages[1].min_completeness: Input should be less than or equal to 1"),
])
def test_stage_conditions_are_validated(change: str, message: str) -> None:
    text = MODEL.replace("min_completeness: 0.75", change)
    with pytest.raises(ModelError) as caught:
        parse_model(text, "m")
    assert message in str(caught.value)


def test_intent_marks_positive_rules_only() -> None:
    with pytest.raises(ModelError, match=r"rules\[1\]: intent marks a buying signal"):
        parse_model(MODEL.replace("points: 50, intent", "points: -50, intent"))


def test_the_first_stage_takes_no_entry_conditions() -> None:
    with pytest.raises(ModelError, match=r"stages\[0\]: every lead starts in the first stage"):
        parse_model(MODEL.replace("{name: lead, min_score: 0}", "{name: lead, min_score: 0, min_intent: 1}"))


def test_check_model_warns_of_conditions_that_cannot_work() -> None:
    from leadpulse.modelcheck import findings

    assert findings(load_model()) == []
    capped = MODEL.replace("points: 10, when", "points: 10, once: true, when").replace("points: 50, intent", "points: 50, once: true, intent")
    said = [str(f) for f in findings(parse_model(capped.replace("min_completeness: 0.75",
                                                                "min_points: {points: 200, from: [web, fit]}")))]
    assert said == [
        "stages[1].min_points.from: fit holds fit points, so fit alone counts toward min_points "
        "(list the categories of behaviour and engagement only)",
        "stages[1].min_points.points: no lead can reach mql: web, fit give at most 101 points, under 200",
    ]


def test_the_cli_shows_grade_u_and_completeness(redis_server: Any, default: ScoringModel) -> None:
    import asyncio
    import time

    from click.testing import CliRunner

    from leadpulse.cli import main

    now = int(time.time() * 1000)

    async def setup() -> None:
        client = Redis.from_url(redis_server.url)
        try:
            await client.flushdb()
            store = LeadStore(client, default)
            await store.apply(positions([event("profile", "identify", now - 3000, lead="cli", traits={"seniority": "vp"}),
                                         event("web", "demo_request", now - 2000, lead="cli"),
                                         event("web", "page_view", now - 1000, lead="cli", url="/pricing")]))
        finally:
            await client.aclose()

    asyncio.run(setup())
    shown = CliRunner().invoke(main, ["score", "cli", "--redis-url", redis_server.url], prog_name="leadpulse")
    assert shown.exit_code == 0, shown.output
    assert "stage mql  fit grade C (+20)  completeness 11%" in shown.output.splitlines()[0]
    listed = CliRunner().invoke(main, ["top", "--redis-url", redis_server.url], prog_name="leadpulse")
    assert listed.exit_code == 0 and " mql   C  11%  cli" in listed.output, listed.output
    as_json = CliRunner().invoke(main, ["score", "cli", "--json", "--redis-url", redis_server.url], prog_name="leadpulse")
    body = orjson.loads(as_json.output)
    assert (body["fit_grade"], body["completeness"]) == ("C", round(1 / 9, 6))


def test_diff_says_what_changed_in_conditions_unknown_fit_and_idle_decay() -> None:
    from leadpulse.modeldiff import changes

    text = files("leadpulse").joinpath("default_model.yaml").read_text()
    new = (text.replace("decay: {lose_percent: 15, after: 30d}\n  engagement", "decay: {lose_percent: 15, after: 30d, mode: idle}\n  engagement")
           .replace("min_intent: 1", "min_intent: 2, min_completeness: 0.85").replace("unknown_below: 0.5", "unknown_below: 0.4")
           .replace("points: 50, once: 90d, intent: true", "points: 50, once: 90d")
           .replace("min_points: {points: 20, from: [behavioral, engagement]}", "min_points: {points: 25, from: engagement}"))
    said = [str(c) for c in changes(load_model(), parse_model(new))]
    for line in ("category behavioral: idle decay none -> -15 % per 30d idle", "demo_request: intent yes -> no",
                 "fit: unknown_below 0.5 -> 0.4", "stage sql: min_completeness none -> 0.85", "stage sql: min_intent 1 -> 2",
                 "stage mql: min_points 20 from behavioral+engagement -> 25 from engagement"):
        assert line in said, (line, said)
