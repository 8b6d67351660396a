"""`leadpulse report`: the numbers of a small hand-made history, each computed by hand here,
and the page drawn by a real headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from leadpulse.cli import main
from tests.support.records import at, handoff, outcome, write

# Model m1, seven leads (hours after T0):
#  a: MQL 1, SQL 2, accepted 10, opportunity 30, won 50 (score 130, A)    -> positive, stage sql
#  b: MQL 1, SQL 3, rejected 70 "no budget" (score 112, B)                 -> negative, stage sql, SLA late
#  c: MQL 0, lost 100 (score 70, C)                                         -> negative, stage mql
#  d: SQL 5 (straight from lead), rejected 6 "no budget" (score 115, B)   -> negative, stage sql
#  e: SQL 10, nothing after                                                 -> open; SQL open past SLA
#  f: won 40 without any handoff (score 40, D), first seen at 0            -> positive, stage none
#  g: sql_at 20 on its outcome only, rejected 21 no reason (score 111, C) -> negative, stage sql
# Model m2: h: MQL 200, lost 300 (score 10, C).
OUTCOMES = [
    outcome("a1", "a", "sql_accepted", 10, score=125.0, fit_grade="A", mql_at=1, sql_at=2),
    outcome("a2", "a", "opportunity_created", 30, score=128.0, fit_grade="A", mql_at=1, sql_at=2),
    outcome("a3", "a", "won", 50, score=130.0, fit_grade="A", mql_at=1, sql_at=2),
    outcome("b1", "b", "sql_rejected", 70, score=112.0, fit_grade="B", reason="no budget", mql_at=1, sql_at=3),
    outcome("c1", "c", "lost", 100, score=70.0, fit_grade="C", mql_at=0),
    outcome("d1", "d", "sql_rejected", 6, score=115.0, fit_grade="B", reason="no budget", mql_at=5, sql_at=5),
    outcome("f1", "f", "won", 40, score=40.0, fit_grade="D"),
    outcome("g1", "g", "sql_rejected", 21, score=111.0, fit_grade="C", mql_at=20, sql_at=20),
    outcome("h1", "h", "lost", 300, score=10.0, fit_grade="C", model_version="m2", mql_at=200, first_seen_at=150),
]
HANDOFFS = [
    handoff("ha1", "a", "mql", 1), handoff("ha2", "a", "sql", 2, "mql"),
    handoff("hb1", "b", "mql", 1), handoff("hb2", "b", "sql", 3, "mql"),
    handoff("hc1", "c", "mql", 0),
    handoff("hd1", "d", "sql", 5),
    handoff("he1", "e", "sql", 10),
    handoff("hh1", "h", "mql", 200, version="m2"),
]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("report")
    bad = [b'{"outcome_id": "x", "lead_id": "z", "outcome": "maybe", "occurred_at": "2026-03-02T09:00:00Z"}', b"not json"]
    outcomes = write(tmp / "outcomes.jsonl", OUTCOMES + [OUTCOMES[0]], bad)  # a1 redelivered: counted once
    handoffs = write(tmp / "handoffs.jsonl", HANDOFFS)
    result = CliRunner().invoke(main, ["report", "--out", str(tmp / "out"), "--outcomes", str(outcomes), "--handoffs", str(handoffs)])
    assert result.exit_code == 0, result.output
    return tmp / "out", orjson.loads((tmp / "out" / "report.json").read_bytes())


def group(report: dict[str, Any], version: str) -> dict[str, Any]:
    (found,) = [g for g in report["groups"] if g["model_version"] == version]
    return found


def test_input_counts(made: tuple[Path, dict[str, Any]]) -> None:
    _, report = made
    assert report["input"]["outcomes"] == 9
    assert report["input"]["handoffs"] == 8
    assert report["input"]["duplicates"] == 1
    assert report["input"]["invalid"] == 2
    assert report["as_of"] == at(300)


def test_conversion_by_band_grade_stage(made: tuple[Path, dict[str, Any]]) -> None:
    _, report = made
    m1 = group(report, "m1")
    # leads a..g; resolved a b c d f g (e open); converted a f
    assert (m1["leads"], m1["resolved"], m1["converted"], m1["open"]) == (7, 6, 2, 1)
    assert m1["conversion_rate"] == 2 / 6
    # scores 130 112 70 115 40 111 -> sorted 40 70 111 112 115 130; r = 0..5; decile = 10r//6 + 1
    # 40 -> 1, 70 -> 2, 111 -> 4, 112 -> 6, 115 -> 7, 130 -> 9
    deciles = {r["decile"]: (r["leads"], r["converted"], r["rate"], r["score_min"]) for r in m1["by_score_decile"]}
    assert deciles == {1: (1, 1, 1.0, 40.0), 2: (1, 0, 0.0, 70.0), 4: (1, 0, 0.0, 111.0),
                       6: (1, 0, 0.0, 112.0), 7: (1, 0, 0.0, 115.0), 9: (1, 1, 1.0, 130.0)}
    assert m1["by_score_decile"][-1]["lift"] == 1.0 / (2 / 6)
    grades = {r["value"]: (r["leads"], r["converted"]) for r in m1["by_fit_grade"]}
    assert grades == {"A": (1, 1), "B": (2, 0), "C": (2, 0), "D": (1, 1)}
    stages = {r["value"]: (r["leads"], r["converted"], r["rate"]) for r in m1["by_stage_at_handoff"]}
    assert stages == {"sql": (4, 1, 1 / 4), "mql": (1, 0, 0.0), "none": (1, 1, 1.0)}


def test_funnel(made: tuple[Path, dict[str, Any]]) -> None:
    _, report = made
    m1 = {r["step"]: r for r in group(report, "m1")["funnel"]}
    # reached: lead a-g (7); mql a b c d e g + f implied by won (7); sql a b d e g + f (6);
    # sal a + f (2); opportunity a + f (2); won a f (2)
    assert [m1[s]["leads"] for s in ("lead", "mql", "sql", "sal", "opportunity", "won")] == [7, 7, 6, 2, 2, 2]
    assert [m1[s]["implied"] for s in ("mql", "sql", "sal", "opportunity", "won")] == [1, 1, 1, 1, 0]
    assert m1["sql"]["rate_from_previous"] == 6 / 7
    assert m1["won"]["rate_from_lead"] == 2 / 7
    # lead -> mql: first_seen 0 for a b c d f g (e has no outcome, so no first_seen); mql times
    # a 1, b 1, c 0, d 5 (its sql), g 20: deltas 1 1 0 5 20 -> median 1 h
    assert (m1["mql"]["median_hours_from_previous"], m1["mql"]["timed_pairs"]) == (1.0, 5)
    # mql -> sql: a 1, b 2, d 0, e 0, g 0 -> median 0
    assert (m1["sql"]["median_hours_from_previous"], m1["sql"]["timed_pairs"]) == (0.0, 5)
    # sql -> sal: a only, 10 - 2 = 8 h; opportunity: 20 h; won: 20 h
    assert (m1["sal"]["median_hours_from_previous"], m1["sal"]["timed_pairs"]) == (8.0, 1)
    assert m1["won"]["median_hours_from_previous"] == 20.0


def test_acceptance_and_sla(made: tuple[Path, dict[str, Any]]) -> None:
    _, report = made
    m1 = group(report, "m1")
    assert m1["acceptance"]["accepted"] == 1 and m1["acceptance"]["rejected"] == 3
    assert m1["acceptance"]["rate"] == 1 / 4
    assert m1["acceptance"]["rejection_reasons"] == [{"reason": "no budget", "count": 2}, {"reason": "(no reason given)", "count": 1}]
    # SQLs: a 2 -> 10 (8 h), b 3 -> 70 (67 h, late), d 5 -> 6 (1 h), e 10 -> none (as of 300: 290 h, past),
    # g 20 -> 21 (1 h)
    sla = m1["sla"]
    assert (sla["sqls"], sla["answered_within_sla"], sla["answered_late"], sla["open_within_sla"], sla["open_past_sla"]) == (5, 3, 1, 0, 1)
    assert sla["breaches"] == 2 and sla["breach_rate"] == 2 / 5
    assert sla["median_response_hours"] == (1 + 8) / 2  # responses 8, 67, 1, 1 -> median (1 + 8) / 2


def test_the_sla_defaults_to_the_models_lifecycle_sla_and_the_flag_overrides_it(tmp_path: Path) -> None:
    """The report judges SQLs by the SLA the worker's sla_overdue handoffs follow: the model's
    lifecycle.sla (--model, else the shipped model's 2d); --sla still overrides it."""
    from importlib.resources import files

    shipped = files("leadpulse").joinpath("default_model.yaml").read_text(encoding="utf-8")
    assert "\n  sla: 2d " in shipped
    model = tmp_path / "model.yaml"
    model.write_text(shipped.replace("\n  sla: 2d ", "\n  sla: 70h ", 1), encoding="utf-8")
    outcomes, handoffs = write(tmp_path / "outcomes.jsonl", OUTCOMES), write(tmp_path / "handoffs.jsonl", HANDOFFS)

    def sla(*args: str) -> tuple[Any, ...]:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        result = CliRunner().invoke(main, ["report", "--out", str(out), "--outcomes", str(outcomes),
                                           "--handoffs", str(handoffs), *args])
        assert result.exit_code == 0, result.output
        found = group(orjson.loads((out / "report.json").read_bytes()), "m1")["sla"]
        return found["sla_hours"], found["answered_within_sla"], found["answered_late"], found["open_past_sla"]

    # b's SQL (hour 3) was rejected at hour 70: late against 48 h, in time against 70 h
    assert sla() == (48, 3, 1, 1)  # the shipped model: 2d
    assert sla("--model", str(model)) == (70, 4, 0, 1)
    assert sla("--model", str(model), "--sla", "48") == (48, 3, 1, 1)
    assert sla("--sla", "1") == (1, 2, 2, 1)  # a (2 -> 10) and b late; d (5 -> 6) and g (20 -> 21) in time


def test_groups_by_model_version(made: tuple[Path, dict[str, Any]]) -> None:
    _, report = made
    assert [g["model_version"] for g in report["groups"]] == ["m1", "m2"]
    m2 = group(report, "m2")
    assert (m2["leads"], m2["resolved"], m2["converted"]) == (1, 1, 0)
    assert [r["leads"] for r in m2["funnel"]] == [1, 1, 0, 0, 0, 0]
    assert m2["funnel"][1]["median_hours_from_previous"] == 50.0  # first seen 150, MQL 200
    whole = report["all"]
    assert (whole["leads"], whole["resolved"], whole["converted"]) == (8, 7, 2)
    assert whole["by_score_decile"] == []  # two models' scores are not comparable
    assert whole["scored_by_another_model"] == 7


def test_label_file_without_lifecycle(tmp_path: Path) -> None:
    """A label file from another system: the four required fields only."""
    rows = [{"outcome_id": f"o{i}", "lead_id": f"l{i}", "outcome": "won" if i % 3 == 0 else "lost", "occurred_at": at(i)} for i in range(9)]
    result = CliRunner().invoke(main, ["report", "--out", str(tmp_path / "out"), "--outcomes", str(write(tmp_path / "o.jsonl", rows))])
    assert result.exit_code == 0, result.output
    whole = orjson.loads((tmp_path / "out" / "report.json").read_bytes())["all"]
    assert (whole["resolved"], whole["converted"], whole["conversion_rate"]) == (9, 3, 3 / 9)
    assert whole["by_stage_at_handoff"] == [{"value": "(unknown)", "leads": 9, "converted": 3, "rate": 3 / 9}]
    assert whole["by_score_decile"] == []


CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("chromium is not installed: scripts/ensure-services installs it (apt-get install chromium)")
    return found


def test_page_is_self_contained(made: tuple[Path, dict[str, Any]]) -> None:
    out, _ = made
    html = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "the page must not fetch anything"
    assert "<script" not in html
    assert html.count("<svg") >= 10  # two model sections (and all) with their charts


def test_chromium_draws_the_charts(made: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, _ = made
    page = (out / "report.html").resolve().as_uri()
    # The DOM after layout, with every chart's drawn size written into it by the browser.
    probe = tmp_path / "probe.html"
    probe.write_text(
        "<!doctype html><body><script>"
        "const f=document.createElement('iframe');f.style.width='1200px';f.style.height='800px';"
        f"f.src={orjson.dumps(page).decode()};"
        "f.onload=()=>{const d=f.contentDocument;const rows=[...d.querySelectorAll('figure.chart')].map(fig=>{"
        "const s=fig.querySelector('svg');const b=s.getBoundingClientRect();"
        "const paths=[...s.querySelectorAll('path')].filter(p=>{const r=p.getBBox();return r.width>0||r.height>0;}).length;"
        "return fig.dataset.chart+' '+Math.round(b.width)+'x'+Math.round(b.height)+' paths='+paths;});"
        "const pre=document.createElement('pre');pre.id='result';pre.textContent=rows.join('\\n');document.body.appendChild(pre);};"
        "document.body.appendChild(f);</script></body>"
    )
    dom = subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--allow-file-access-from-files",
         "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    found = re.search(r'<pre id="result">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    charts = [line.split() for line in found[1].strip().splitlines()]
    kinds = {c[0] for c in charts}
    assert {"deciles", "funnel", "grade", "stage", "reasons", "sla"} <= kinds
    for name, size, paths in charts:
        width, height = (int(x) for x in size.split("x"))
        assert width > 100 and height > 50, (name, size)
        assert int(paths.removeprefix("paths=")) >= 3, (name, paths)


def test_screenshot(made: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, _ = made
    shot = tmp_path / "shot.png"
    subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600",
         f"--screenshot={shot}", (out / "report.html").resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    )
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


@pytest.mark.integration
async def test_reads_the_topics(broker: Any, made: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """Without --outcomes the report reads leads.outcomes and leads.handoff (here on a real
    broker, under per-test names) and finds the same numbers as from the files."""
    import asyncio
    import uuid

    from leadpulse import kafka
    from leadpulse.settings import load_settings
    from tests.support.kafkatools import produce

    suffix = uuid.uuid4().hex[:8]
    topics = {"outcomes": f"leads.outcomes.{suffix}", "handoffs": f"leads.handoff.{suffix}"}
    settings = load_settings(kafka_bootstrap=broker.bootstrap, partitions=3)
    await kafka.ensure_topics(settings, topics.values())
    await produce(broker.bootstrap, [
        *[(topics["outcomes"], r["lead_id"].encode(), orjson.dumps(r)) for r in [*OUTCOMES, OUTCOMES[0]]],
        *[(topics["handoffs"], r["lead_id"].encode(), orjson.dumps(r)) for r in HANDOFFS],
    ])
    args = ["report", "--out", str(tmp_path), "--kafka-bootstrap", broker.bootstrap,
            "--outcomes-topic", topics["outcomes"], "--handoff-topic", topics["handoffs"]]
    result = await asyncio.to_thread(CliRunner().invoke, main, args)
    assert result.exit_code == 0, result.output
    from_topics = orjson.loads((tmp_path / "report.json").read_bytes())
    _, from_files = made
    assert from_topics["input"]["duplicates"] == 1 and from_topics["input"]["invalid"] == 0
    assert from_topics["groups"] == from_files["groups"]
