"""Who a handoff names, against a real redis-server: the traits come back from the script that
decided the transition (apply, sweep, re-evaluation), the fields and the CRM link follow the
deployment's settings, opt-outs are recorded, and a PII-minimal setup keeps and sends none."""

from __future__ import annotations

from pathlib import Path

import fastjsonschema
import orjson
import pytest
from redis.asyncio import Redis

from leadpulse import handoff, reeval
from leadpulse.bounds import Retention
from leadpulse.events import load_schema
from leadpulse.keys import Keys
from leadpulse.model import ScoringModel, parse_model
from leadpulse.settings import Settings
from leadpulse.state import LeadStore
from leadpulse.who import DEFAULT_WHO, Who, parse_who, who_traits
from tests.support.fixtures import DAY, T0, event

MODEL = """
version: who-1
categories:
  hot: {half_life: 2d}
  neg: {}
  fitcat: {}
rules:
  - {id: demo, category: hot, points: 50, when: {source: web, type: demo_request}}
  - {id: pricing, category: hot, points: 30, when: {source: web, type: page_view}}
  - {id: unsub, category: neg, points: -1, when: {source: email, type: unsubscribe}}
fit:
  grades: {A: 30, B: 20, C: 10}
  rules:
    - {id: vp, category: fitcat, points: 30, when: {seniority: vp}}
stages:
  - {name: lead, min_score: 0}
  - {name: mql, min_score: 40, handoff: true}
  - {name: sql, min_score: 100, handoff: true}
hysteresis: 5
dedup_window: 7d
"""
PERSON = {"email": "kim@acme.example", "name": "Kim Lee", "job_title": "VP Sales", "company": "Acme",
          "company_domain": "acme.example", "country": "DE", "owner": "rep-7", "seniority": "vp",
          "phone": "+49 30 1234", "favourite_colour": "green"}
validate = fastjsonschema.compile(load_schema("handoff.schema.json"))


@pytest.fixture(scope="module")
def tmodel() -> ScoringModel:
    return parse_model(MODEL, "test")


def positions(events: list) -> list:
    return [(e, f"t:0:{i}") for i, e in enumerate(events)]


async def stored_traits(redis: Redis, lead: str) -> dict:
    raw = await redis.get(Keys().lead(lead).traits)
    return orjson.loads(raw) if raw else {}


def test_who_settings_parse_lists_json_and_none() -> None:
    assert parse_who("name,title=job_title") == {"name": "name", "title": "job_title"}
    assert parse_who('{"rep": "owner"}') == {"rep": "owner"}
    assert parse_who("") == {} and parse_who("{}") == {}
    for bad in ("Name=name", "title=", '{"x": 1}', "[1]"):
        with pytest.raises(ValueError):
            parse_who(bad)
    assert Settings().handoff_who == DEFAULT_WHO
    s = Settings(handoff_who="country, owner", crm_url_template="https://crm.example.com/l/{lead_id}")
    assert s.handoff_who == {"country": "country", "owner": "owner"}
    who = Who.from_settings(s)
    assert who.of("a/b c", {"country": "FR", "email": "x@y.z"}) == {
        "who": {"country": "FR"}, "crm_url": "https://crm.example.com/l/a%2Fb%20c", "do_not_contact": []}
    assert Who({}, None).of("l", PERSON) == {"who": None, "crm_url": None, "do_not_contact": []}


async def test_a_promotion_names_the_person_from_the_same_script_call(redis: Redis, tmodel: ScoringModel) -> None:
    store = LeadStore(redis, tmodel)
    who = Who(DEFAULT_WHO, "https://crm.example.com/leads/{lead_id}")
    result = await store.apply(positions([
        event("profile", "identify", T0, lead="kim", traits=PERSON),
        event("web", "demo_request", T0 + 1000, lead="kim"),
    ]))
    (t,) = result.transitions
    record = handoff.build(tmodel, t, who)
    validate(record)
    assert record["who"] == {"name": "Kim Lee", "email": "kim@acme.example", "title": "VP Sales", "company": "Acme",
                             "domain": "acme.example", "country": "DE", "owner": "rep-7"}
    assert record["crm_url"] == "https://crm.example.com/leads/kim" and record["do_not_contact"] == []
    # Redis keeps the fit traits and the configured ones; never the rest (phone, …)
    assert set(await stored_traits(redis, "kim")) == set(PERSON) - {"phone", "favourite_colour"}

    # a later identify changes the title: the next handoff says what Redis held when it was decided
    result = await store.apply(positions([
        event("profile", "identify", T0 + 2000, lead="kim", traits={"job_title": "CRO"}),
        event("web", "page_view", T0 + 3000, lead="kim"),
        event("web", "page_view", T0 + 4000, lead="kim"),
    ]))
    (t,) = result.transitions
    assert (t.to_stage, handoff.build(tmodel, t, who)["who"]["title"]) == (2, "CRO")


async def test_a_lead_without_traits_is_named_by_nobody_and_older_records_stay_valid(
        redis: Redis, tmodel: ScoringModel) -> None:
    store = LeadStore(redis, tmodel)
    (t,) = (await store.apply(positions([event("web", "demo_request", T0, lead="anon-ish")]))).transitions
    record = handoff.build(tmodel, t)
    assert record["who"] is None and record["crm_url"] is None
    validate(record)
    for field in ("who", "crm_url", "do_not_contact"):  # optional: records of older workers lack them
        validate({k: v for k, v in record.items() if k != field})


async def test_unsubscribe_and_spam_report_are_kept_and_flagged(redis: Redis, tmodel: ScoringModel) -> None:
    store = LeadStore(redis, tmodel)
    await store.apply(positions([
        event("profile", "identify", T0, lead="u1", traits={"email": "u1@x.example"}),
        event("email", "unsubscribe", T0 + 1000, lead="u1"),
        event("email", "spam_report", T0 + 1500, lead="u2"),  # no identify before: still recorded
    ]))
    assert await stored_traits(redis, "u1") == {"email": "u1@x.example", "unsubscribed": T0 + 1000}
    assert await stored_traits(redis, "u2") == {"spam_reported": T0 + 1500}
    (t,) = (await store.apply(positions([event("web", "demo_request", T0 + 2000, lead="u1")]))).transitions
    assert handoff.build(tmodel, t)["do_not_contact"] == ["unsubscribed"]
    # a re-subscribe (an identify clearing the trait) lifts it; the email stays
    await store.apply(positions([event("profile", "identify", T0 + 3000, lead="u1", traits={"unsubscribed": False})]))
    (t,) = (await store.apply(positions([event("web", "page_view", T0 + 4000, lead="u1"),
                                         event("web", "demo_request", T0 + 5000, lead="u1")]))).transitions
    record = handoff.build(tmodel, t)
    assert record["do_not_contact"] == [] and record["who"] == {"email": "u1@x.example"}


async def test_pii_minimal_keeps_and_names_only_what_is_configured(redis: Redis, tmodel: ScoringModel) -> None:
    fields = parse_who("country")
    store = LeadStore(redis, tmodel, retention=Retention(who_traits=who_traits(fields)))
    (t,) = (await store.apply(positions([
        event("profile", "identify", T0, lead="p1", traits=PERSON),
        event("web", "demo_request", T0 + 1, lead="p1"),
    ]))).transitions
    assert handoff.build(tmodel, t, Who(fields))["who"] == {"country": "DE"}
    # the fit traits the model reads stay (email feeds email_domain); name, title, company do not
    assert set(await stored_traits(redis, "p1")) == {"email", "seniority", "country"}


async def test_demotions_of_the_sweep_and_a_model_change_name_the_person_too(
        redis: Redis, tmodel: ScoringModel) -> None:
    store = LeadStore(redis, tmodel)
    await store.apply(positions([
        event("profile", "identify", T0, lead="s1", traits=PERSON),
        event("web", "demo_request", T0 + 1, lead="s1"),
    ]))
    (demoted,) = await store.sweep(T0 + 20 * DAY)
    assert demoted.kind == "demoted" and handoff.build(tmodel, demoted)["who"]["name"] == "Kim Lee"
    await store.ack([demoted])
    assert await store.sweep(T0 + 21 * DAY) == []

    await store.apply(positions([event("web", "demo_request", T0 + 30 * DAY, lead="s2"),
                                 event("profile", "identify", T0 + 30 * DAY + 1, lead="s2", traits={"name": "Ann"})]))
    stricter = LeadStore(redis, parse_model(MODEL.replace("min_score: 40", "min_score: 60"), "test"))
    (t,) = await reeval.decide(stricter, ["s2"], T0 + 30 * DAY + 2)
    assert t.kind == "demoted" and handoff.build(stricter.model, t)["who"] == {"name": "Ann"}


def test_the_schema_documents_the_new_fields() -> None:
    schema = orjson.loads(Path(__file__).resolve().parent.parent.joinpath("schemas", "handoff.schema.json").read_bytes())
    for field in ("who", "crm_url", "do_not_contact"):
        assert field in schema["properties"] and field not in schema["required"]
        assert schema["properties"][field]["description"]
