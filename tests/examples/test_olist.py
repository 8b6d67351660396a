"""examples/olist on a sample of the real Olist rows: converted, replayed in time order through a
real broker and a real `leadpulse worker` process, and reported from what the worker served."""

from __future__ import annotations

import importlib.util
import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson
import pytest
from redis.asyncio import Redis

from leadpulse.dev.embedded import RedisServer, TansuBroker
from leadpulse.events import from_dict, load_schema

from .shareddata import shared_file

pytestmark = pytest.mark.integration

MQLS = 150
#: every sampled MQL sends the same events; only the origin trait tells them apart
MODEL = """\
version: olist-test
categories:
  behavioral: {}
  profile: {}
rules:
  - {id: signup, category: behavioral, points: 10, when: {source: web, type: form_submit}}
fit:
  grades: {A: 30, B: 20, C: 10}
  rules:
    - {id: paid_search, category: profile, points: 30, when: {origin: paid search}}
stages:
  - {name: lead, min_score: 0}
  - {name: mql, min_score: 5, handoff: true}
  - {name: sql, min_score: 35, handoff: true}
max_event_age: null
custom_fields:
  traits: [landing_page, origin]
"""


def olist_dir(repo_root: Path) -> Path:
    return shared_file(repo_root, "olist_marketing_qualified_leads_dataset.csv").parent


@pytest.fixture(scope="module")
def olist(repo_root: Path) -> Any:
    spec = importlib.util.spec_from_file_location("olist_replay", repo_root / "examples/olist/replay.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines() if x.strip()]


def test_converter_follows_the_rows(olist: Any, repo_root: Path, tmp_path: Path) -> None:
    data = olist_dir(repo_root)
    counts = olist.convert.convert(data, tmp_path, MQLS)
    rows = olist.convert._read(data / olist.convert.MQLS)[:MQLS]
    deals = {d["mql_id"]: d for d in olist.convert._read(data / olist.convert.DEALS)}
    events, outcomes = lines(tmp_path / "events.jsonl"), lines(tmp_path / "outcomes.jsonl")
    parsed = [from_dict(e, now_ms=2**62, skew_ms=0) for e in events]  # raises InvalidEvent if not
    assert [e["occurred_at"] for e in events] == sorted(e["occurred_at"] for e in events)  # time order
    won = {r["mql_id"] for r in rows if r["mql_id"] in deals}
    assert counts == {"mqls": MQLS, "won": len(won), "events": 3 * MQLS + len(won), "as_of": "2018-11-15T00:00:00.000Z"}
    assert Counter((e.source, e.type) for e in parsed) == {
        ("profile", "identify"): MQLS, ("web", "page_view"): MQLS, ("web", "form_submit"): MQLS, ("crm", "won"): len(won)}
    by_lead: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_lead.setdefault(e["lead_id"], []).append(e)
    for r in rows:
        mine = by_lead[r["mql_id"]]
        date = r["first_contact_date"].replace(".", "-")
        identify = next(e for e in mine if e["type"] == "identify")
        assert identify["occurred_at"].startswith(date)
        assert identify["traits"] == {"origin": r["origin"].casefold(), "landing_page": r["landing_page_id"]}
        assert all(r["landing_page_id"] in e["properties"]["url"] for e in mine if e["source"] == "web")
        assert set(identify["traits"]) == {"origin", "landing_page"}  # no closed-deal column leaks in
    validate = fastjsonschema.compile(load_schema("outcome.schema.json"))
    for o in outcomes:
        validate(o)
    assert {o["lead_id"] for o in outcomes if o["outcome"] == "won"} == won
    assert {o["lead_id"]: o["outcome"] for o in outcomes} == {r["mql_id"]: "won" if r["mql_id"] in won else "lost" for r in rows}
    assert all(o["occurred_at"] == counts["as_of"] for o in outcomes if o["outcome"] == "lost")


@pytest.mark.slow  # ~20-25 s on 2 shared cores: a worker process replays 150 MQLs, paused per simulated day
async def test_a_sample_replays_through_the_worker_and_reports_by_band(
    olist: Any, repo_root: Path, tmp_path: Path, broker: TansuBroker, redis_server: RedisServer, redis: Redis
) -> None:
    # `redis` empties the shared Redis before and after: the replay's worker adopts its own model
    # there, which a later module's worker would otherwise follow (tests/test_worker.py saw its
    # lead demoted under the Olist model).
    olist.convert.convert(olist_dir(repo_root), tmp_path, MQLS)
    model = tmp_path / "model.yaml"
    model.write_text(MODEL)
    served = await olist.replay(broker.bootstrap, redis_server.url, model, tmp_path / "events.jsonl", tmp_path,
                                tag=f"olist{uuid.uuid4().hex[:8]}", timeout=120)
    events, labels = lines(tmp_path / "events.jsonl"), lines(tmp_path / "outcomes.jsonl")
    assert served["sent"] == len(events)

    # every MQL is served by the worker, scored from its events: the sign-up, plus its origin
    traits = {e["lead_id"]: e["traits"] for e in events if e["type"] == "identify"}
    assert set(served["leads"]) == set(traits)
    won = {x["lead_id"] for x in labels if x["outcome"] == "won"}
    for lead, view in served["leads"].items():
        paid = traits[lead]["origin"] == "paid search"
        assert view["score"] == (40 if paid else 10), (lead, view)
        # a worker that acts on CRM outcomes (issue 12, lifecycle) has closed the won leads
        closed = lead in won and bool(served["outcomes"])
        assert view["stage"] == ("customer" if closed else "sql" if paid else "mql")
        assert view["model_version"] == "olist-test"
    # the worker's outcome records (when it publishes them): one per deal, the lead as it stood
    # at won_date, after its first contact (the replay kept each lead's order across topics)
    contact = {e["lead_id"]: e["occurred_at"] for e in events if e["type"] == "identify"}
    assert {o["lead_id"] for o in served["outcomes"]} in (set(), won)
    for o in served["outcomes"]:
        if contact[o["lead_id"]] < o["occurred_at"]:
            assert o["first_seen_at"] == contact[o["lead_id"]]
            assert o["score"] == served["leads"][o["lead_id"]]["score"]
    # and handed off once per stage crossed, at its first contact's time
    promoted = Counter((h["lead_id"], h["stage"]) for h in served["handoffs"] if h["kind"] == "promoted")
    assert {lead for lead, stage in promoted if stage == "sql"} == {x for x, t in traits.items() if t["origin"] == "paid search"}
    assert set(promoted.values()) == {1}

    result = olist.finish(tmp_path, served, set(traits))
    records = lines(tmp_path / "outcomes-scored.jsonl")
    assert len(records) == MQLS
    assert result["label_source"]["not scored by the worker"] == 0
    assert sum(result["label_source"].values()) == MQLS
    assert result["label_source"]["worker outcome record"] == len(served["outcomes"])
    report = json.loads((tmp_path / "report" / "report.json").read_text())["all"]
    assert (report["resolved"], report["converted"]) == (MQLS, len(won))
    # conversion by band as computed by hand from the labels and the served scores
    for band in report["by_score_decile"]:
        members = [lead for lead, v in served["leads"].items() if band["score_min"] <= v["score"] <= band["score_max"]]
        assert band["leads"] == len(members)
        assert band["converted"] == len(won & set(members))
    by_stage = {row["value"]: row["leads"] for row in report["by_stage_at_handoff"]}
    paid = sum(1 for t in traits.values() if t["origin"] == "paid search")
    assert by_stage == {"sql": paid, "mql": MQLS - paid} or by_stage == {k: v for k, v in {"sql": paid, "mql": MQLS - paid}.items() if v}
    assert (tmp_path / "report" / "report.html").stat().st_size > 1000


def test_segments_keep_each_leads_order_across_topics(olist: Any) -> None:
    """Pure: the cut points of the replay's stream."""
    def ev(lead: str, source: str, at: int) -> dict[str, Any]:
        return {"event_id": f"{lead}{at}", "lead_id": lead, "source": source, "type": "x", "occurred_at": at}

    events = [ev("a", "profile", 1), ev("b", "profile", 1), ev("a", "web", 2), ev("b", "web", 2), ev("c", "profile", 3),
              ev("a", "crm", 4), ev("c", "web", 5), ev("b", "web", 6)]
    parts = olist.segments(events)
    assert [e for part in parts for e in part] == events  # the time order is kept
    for part in parts:  # within a segment, each lead's events are on one topic
        topics: dict[str, set[str]] = {}
        for e in part:
            topics.setdefault(e["lead_id"], set()).add(e["source"])
        assert all(len(t) == 1 for t in topics.values())
    assert [[e["event_id"] for e in part] for part in parts] == [["a1", "b1"], ["a2", "b2", "c3"], ["a4", "c5", "b6"]]
