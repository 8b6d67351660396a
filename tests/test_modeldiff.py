"""`leadpulse diff`: what changed between two models, in words (pure code: no services)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import yaml

from leadpulse.model import load_model, parse_model
from leadpulse.modeldiff import changes

DEFAULT = Path(__file__).parent.parent / "src/leadpulse/default_model.yaml"


def edited(**edits: object) -> str:
    data = yaml.safe_load(DEFAULT.read_text())
    for rule in data["rules"]:
        if rule["id"] == "pricing_page":
            rule["points"] = 30
            rule["when"]["url"] = {"glob": "*/pricing*"}
    data["rules"] = [r for r in data["rules"] if r["id"] != "webinar_question"]
    data["rules"].append({"id": "trial_started", "category": "behavioral", "points": 40,
                          "when": {"source": "crm", "type": "trial_started"}, "once": True})
    for stage in data["stages"]:
        if stage["name"] == "sql":
            stage["min_score"] = 100
    data["categories"]["behavioral"]["cap"] = 80
    data["fit"]["grades"]["A"] = 55
    data["hysteresis"] = 5
    data.update(edits)
    return yaml.safe_dump(data, sort_keys=False)


def test_every_kind_of_change_is_said_in_words() -> None:
    old = load_model(DEFAULT)
    new = parse_model(edited(version="2027.01"))
    said = [str(c) for c in changes(old, new)]
    assert said[0] == f"version {old.version} -> 2027.01"
    assert "pricing_page: points 25 -> 30" in said
    assert "stage sql: min_score 110 -> 100" in said
    assert any(s.startswith("rule webinar_question removed") for s in said)
    assert "rule trial_started added: 40 points, crm trial_started, category behavioral" in said
    assert "pricing_page: url {glob: [/pricing, /pricing/*]} -> {glob: ['*/pricing*']}" in said
    assert "category behavioral: cap none -> 80" in said
    assert "grade A: min fit points 50 -> 55" in said
    assert "hysteresis 10 -> 5" in said
    assert len(said) == 9, said


def test_the_same_model_written_differently_is_no_change() -> None:
    text = DEFAULT.read_text()
    assert changes(parse_model(text), parse_model("# a comment\n" + text)) == []
    shorthand = text.replace("seniority: [vp, director, head]", "seniority: {in: [vp, director, head]}")
    assert changes(parse_model(text), parse_model(shorthand)) == []


def test_the_command_prints_words_or_json_and_exits_1_when_they_differ(tmp_path: Path) -> None:
    new = tmp_path / "new.yaml"
    new.write_text(edited(version="2027.01"))
    out = subprocess.run([sys.executable, "-m", "leadpulse", "diff", str(DEFAULT), str(new)], capture_output=True, text=True)
    assert out.returncode == 1 and "stage sql: min_score 110 -> 100" in out.stdout.splitlines()
    out = subprocess.run([sys.executable, "-m", "leadpulse", "diff", "--json", str(DEFAULT), str(new)], capture_output=True)
    rows = orjson.loads(out.stdout)
    assert {"path": "stages.sql.min_score", "kind": "changed", "change": "stage sql: min_score 110 -> 100",
            "old": 110.0, "new": 100.0} in rows
    same = subprocess.run([sys.executable, "-m", "leadpulse", "diff", str(DEFAULT), str(DEFAULT)], capture_output=True, text=True)
    assert same.returncode == 0 and same.stdout.strip() == "no change"
