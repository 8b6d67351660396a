"""examples/x_education/convert.py on the first rows of the real Leads.csv: every event passes
the event contract, every outcome the outcome contract, no excluded column leaks through, and
Last Activity is sent as the lead's own event or masked when it is a sales action."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import fastjsonschema
import orjson
import pytest

from leadpulse.events import from_dict, load_schema

from .shareddata import shared_file

ROWS = 60


def leads_csv(repo_root: Path) -> Path:
    return shared_file(repo_root, "Leads.csv")


@pytest.fixture(scope="module")
def converted(repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    source = leads_csv(repo_root)
    out = tmp_path_factory.mktemp("xedu")
    subprocess.run([sys.executable, str(repo_root / "examples/x_education/convert.py"), str(source), str(out), "--limit", str(ROWS)], check=True)
    with source.open(encoding="utf-8", newline="") as f:
        rows = [row for _, row in zip(range(ROWS), csv.DictReader(f))]
    return out, rows


def lines(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def test_events_pass_the_contract(converted: tuple[Path, list[dict[str, str]]]) -> None:
    out, rows = converted
    events = lines(out / "events.jsonl")
    parsed = [from_dict(e, now_ms=2**62, skew_ms=0) for e in events]  # raises InvalidEvent if not
    assert len({e.event_id for e in parsed}) == len(parsed)
    assert {e.lead_id for e in parsed} == {r["Prospect ID"] for r in rows}
    for e in parsed:
        for value in e.traits.values():
            assert isinstance(value, (str, bool, int, float)) and len(str(value)) <= 64
    kinds = {(e.source, e.type) for e in parsed}
    assert {("profile", "identify"), ("web", "page_view")} <= kinds
    # one identify per lead, before any other event of the lead
    first = {}
    for e in sorted(parsed, key=lambda e: e.occurred_at):
        first.setdefault(e.lead_id, e)
    assert all(e.type == "identify" for e in first.values())


def test_events_follow_the_columns(converted: tuple[Path, list[dict[str, str]]]) -> None:
    out, rows = converted
    events = lines(out / "events.jsonl")
    for row in rows:
        mine = [e for e in events if e["lead_id"] == row["Prospect ID"]]
        pings = [e for e in mine if e["type"] == "page_view" and e["properties"].get("ping")]
        assert len(pings) == int(row["Total Time Spent on Website"]) // 30
        # (the "Page Visited on Website" last activity is a page view outside the counted visits)
        visits = {e["properties"]["visit"] for e in mine if e["type"] == "page_view" and "visit" in e["properties"]}
        expected = int(float(row["TotalVisits"] or 0)) or (1 if int(row["Total Time Spent on Website"]) else 0)
        assert len(visits) == expected
        assert any(e["type"] == "unsubscribe" for e in mine) == (row["Do Not Email"] == "Yes")
        (identify,) = [e for e in mine if e["type"] == "identify"]
        traits = identify["traits"]
        assert traits.get("lead_origin") == row["Lead Origin"]
        assert "Select" not in traits.values()


def test_no_excluded_column_leaks(converted: tuple[Path, list[dict[str, str]]]) -> None:
    out, rows = converted
    text = (out / "events.jsonl").read_text()
    for key in ("tags", "lead_quality", "lead_profile", "asymmetrique", "last_activity", "last_notable"):
        assert f'"{key}' not in text.casefold()
    for row in rows:  # the sales tags' own words never appear
        if row["Tags"] and len(row["Tags"]) > 6:
            assert row["Tags"] not in text


def test_outcomes_pass_the_contract(converted: tuple[Path, list[dict[str, str]]]) -> None:
    out, rows = converted
    validate = fastjsonschema.compile(load_schema("outcome.schema.json"))
    outcomes = lines(out / "outcomes.jsonl")
    for o in outcomes:
        validate(o)
    by_lead = {o["lead_id"]: o for o in outcomes}
    events = lines(out / "events.jsonl")
    last = {}
    for e in events:
        last[e["lead_id"]] = max(last.get(e["lead_id"], ""), e["occurred_at"])
    for row in rows:
        o = by_lead[row["Prospect ID"]]
        assert o["outcome"] == ("won" if row["Converted"] == "1" else "lost")
        assert o["occurred_at"] > last[row["Prospect ID"]]  # every event precedes its outcome


def test_deterministic(converted: tuple[Path, list[dict[str, str]]], repo_root: Path, tmp_path: Path) -> None:
    out, _ = converted
    subprocess.run([sys.executable, str(repo_root / "examples/x_education/convert.py"), str(leads_csv(repo_root)), str(tmp_path), "--limit", str(ROWS)], check=True)
    assert (tmp_path / "events.jsonl").read_bytes() == (out / "events.jsonl").read_bytes()


def _convert(repo_root: Path, out: Path, *flags: str) -> list[dict[str, object]]:
    subprocess.run([sys.executable, str(repo_root / "examples/x_education/convert.py"), str(leads_csv(repo_root)), str(out),
                    "--limit", str(ROWS), *flags], check=True)
    return lines(out / "events.jsonl")


def test_last_activity_lead_side_is_an_event_sales_side_is_masked(converted: tuple[Path, list[dict[str, str]]], repo_root: Path, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("x_education_convert", repo_root / "examples/x_education/convert.py")
    assert spec is not None and spec.loader is not None
    convert = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(convert)
    LEAD_ACTIVITY, SALES_ACTIVITY = convert.LEAD_ACTIVITY, convert.SALES_ACTIVITY

    out, rows = converted  # the default: --last-activity lead
    events = lines(out / "events.jsonl")
    strict = _convert(repo_root, tmp_path / "strict", "--last-activity", "none")
    outcomes = {o["lead_id"]: o for o in lines(out / "outcomes.jsonl")}
    seen = {"lead": 0, "sales": 0}
    for row in rows:
        lead = row["Prospect ID"]
        mine = [e for e in events if e["lead_id"] == lead]
        extra = [e for e in mine if e["event_id"] not in {s["event_id"] for s in strict if s["lead_id"] == lead}]
        activity = row["Last Activity"]
        if activity in LEAD_ACTIVITY and not (activity == "Unsubscribed" and row["Do Not Email"] == "Yes"):
            seen["lead"] += 1
            source, type_, properties = LEAD_ACTIVITY[activity]
            (event,) = extra  # one event, the one the value says, the last before the outcome
            assert (event["source"], event["type"]) == (source, type_)
            assert event.get("properties", {}) == properties
            assert event["occurred_at"] == max(e["occurred_at"] for e in mine) < outcomes[lead]["occurred_at"]
        else:
            seen["sales"] += activity in SALES_ACTIVITY
            assert extra == []  # sales' actions (and blanks) send nothing
    assert seen["lead"] and seen["sales"]  # the sample holds both kinds
    text = (out / "events.jsonl").read_text()
    for value in (*SALES_ACTIVITY, *LEAD_ACTIVITY, "Modified"):  # no snapshot value is sent as text
        assert value not in text
    # the strict conversion is what it was: no Last Activity at all
    assert len(strict) < len(events)
    assert all(e["event_id"] in {x["event_id"] for x in events} for e in strict)


def test_raw_mode_sends_the_snapshots_only_when_asked(repo_root: Path, tmp_path: Path) -> None:
    raw = _convert(repo_root, tmp_path, "--last-activity", "raw")
    traits = [e["traits"] for e in raw if e["type"] == "identify"]
    assert any("last_activity" in t and "last_notable_activity" in t for t in traits)
