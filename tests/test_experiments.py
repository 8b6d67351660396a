"""Threshold A/B tests: the split (stable, by share), the `experiments:` section's validation,
arms scoring with their own bars in a real redis-server, and `leadpulse report`'s verdict per
arm from a file of outcome records, its figures computed by hand here."""

from __future__ import annotations

import math
import re
from collections import Counter
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import yaml
from click.testing import CliRunner
from redis.asyncio import Redis

from leadpulse import experiments, handoff
from leadpulse.cli import main
from leadpulse.errors import ModelError
from leadpulse.events import load_schema
from leadpulse.model import ScoringModel, parse_model
from leadpulse.outcome import build as outcome_record
from leadpulse.state import LeadStore

from tests.support.records import outcome, write
from tests.support.fixtures import T0, event


def model_with(arms: list[dict[str, Any]], name: str = "mql_bar", **extra: Any) -> ScoringModel:
    data = yaml.safe_load(files("leadpulse").joinpath("default_model.yaml").read_text(encoding="utf-8"))
    data.update(version="ab-1", experiments=[{"name": name, "arms": arms}], **extra)
    return parse_model(yaml.safe_dump(data))


HALVES = [{"name": "control", "share": 50}, {"name": "low", "share": 50, "stages": {"mql": {"min_score": 30}}}]


def test_the_split_is_a_fixed_function_of_the_experiment_and_the_lead() -> None:
    # BLAKE2b, not hash(): these values hold on every worker, restart and Python version.
    assert experiments.bucket("mql_bar", "lead-1") == pytest.approx(0.13171249348372419, abs=1e-15)
    assert experiments.bucket("mql_bar", "lead-2") != experiments.bucket("other", "lead-2")
    split = experiments.split(model_with(HALVES))
    assert split is not None
    assert [split.arm_of(x) for x in ("lead-1", "a", "b")] == ["mql_bar/control"] * 3
    counts = Counter(split.arm_of(f"lead-{i}") for i in range(20_000))
    # 50/50: a binomial(20000, 0.5) is within ±400 of 10000 with probability 1 - 1e-8
    assert abs(counts["mql_bar/low"] - 10_000) < 400
    uneven = experiments.split(model_with([{"name": "control", "share": 9}, {"name": "low", "share": 1}]))
    assert uneven is not None
    share = Counter(uneven.arm_of(f"lead-{i}") for i in range(20_000))["mql_bar/low"] / 20_000
    assert 0.09 < share < 0.11
    # Changing the shares (10 % -> 20 % in `low`) moves only the leads between the old and new
    # boundaries (buckets 0.8 to 0.9): every lead in `low` stays there.
    wider = experiments.split(model_with([{"name": "control", "share": 8}, {"name": "low", "share": 2}]))
    assert wider is not None
    leads = [f"lead-{i}" for i in range(5_000)]
    moved = {lead for lead in leads if uneven.arm_of(lead) != wider.arm_of(lead)}
    assert moved == {lead for lead in leads if 0.8 <= experiments.bucket("mql_bar", lead) < 0.9}
    assert all(wider.arm_of(lead) == "mql_bar/low" for lead in moved)


def test_each_arm_is_the_model_with_its_bars() -> None:
    split = experiments.split(model_with([*HALVES[:1], {**HALVES[1], "hysteresis": 3}]))
    assert split is not None
    control, low = split.models["mql_bar/control"], split.models["mql_bar/low"]
    assert [s.min_score for s in control.stages] == [0, 60, 110] and control.hysteresis == 10
    assert [s.min_score for s in low.stages] == [0, 30, 110] and low.hysteresis == 3
    assert low.rules == control.rules and low.version == "ab-1"


@pytest.mark.parametrize(("arms", "extra", "message"), [
    ([{"name": "control", "share": 1}, {"name": "b", "share": 1, "stages": {"mqx": {"min_score": 5}}}], {},
     "experiments[0].arms[1].stages.mqx: unknown stage (known: lead, mql, sql)"),
    ([{"name": "control", "share": 1}, {"name": "b", "share": 1, "stages": {"mql": {"min_score": 200}}}], {},
     "experiments[0].arms[1].stages: sql's min_score must be above mql's"),
    ([{"name": "control", "share": 1}], {}, "experiments[0].arms: "),
    ([{"name": "a", "share": 1}, {"name": "a", "share": 2}], {}, "arm names must be unique"),
    ([{"name": "a", "share": 0}, {"name": "b", "share": 2}], {}, "experiments[0].arms[0].share"),
    ([{"name": "a", "share": 1}, {"name": "b", "share": 1, "categories": {"behavioural": {"weight": 2}}}], {},
     "experiments[0].arms[1].categories.behavioural: unknown category (known: behavioral, demographic, engagement, firmographic, negative)"),
    ([{"name": "a", "share": 1}, {"name": "b", "share": 1, "grades": {"A": 10, "B": 30, "C": 5}}], {},
     "experiments[0].arms[1].grades: grades must satisfy A > B > C"),
])
def test_the_section_is_validated_with_the_path_of_the_mistake(arms: list[dict[str, Any]], extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelError, match=re.escape(message)):
        model_with(arms, **extra)


def test_one_experiment_at_a_time() -> None:
    data = yaml.safe_load(files("leadpulse").joinpath("default_model.yaml").read_text(encoding="utf-8"))
    data["experiments"] = [{"name": n, "arms": HALVES} for n in ("one", "two")]
    with pytest.raises(ModelError, match="one experiment at a time"):
        parse_model(yaml.safe_dump(data))


def test_check_model_accepts_the_section(tmp_path: Path) -> None:
    data = yaml.safe_load(files("leadpulse").joinpath("default_model.yaml").read_text(encoding="utf-8"))
    data["experiments"] = [{"name": "mql_bar", "arms": [dict(arm) for arm in HALVES]}]
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(data))
    assert CliRunner().invoke(main, ["check-model", str(good)]).exit_code == 0
    data["experiments"][0]["arms"][1]["stages"] = {"mql": {"min_score": 500}}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(main, ["check-model", str(bad)])
    assert result.exit_code != 0 and "sql's min_score must be above mql's" in result.output


async def test_arms_score_with_their_own_bars_in_redis(redis: Redis) -> None:
    model = model_with(HALVES)
    split = experiments.split(model)
    assert split is not None
    by_arm: dict[str, list[str]] = {}
    for i in range(40):
        by_arm.setdefault(split.arm_of(f"r-{i}"), []).append(f"r-{i}")
    control, low = by_arm["mql_bar/control"][:3], by_arm["mql_bar/low"][:3]
    store = LeadStore(redis, model)
    # 50 points each: over the low arm's bar (30), under the control's (60); all in one batch
    result = await store.apply([(event("web", "demo_request", T0, lead=lead), f"web:0:{i}")
                                for i, lead in enumerate(control + low)], now=T0)
    promoted = {t.lead_id: t for t in result.transitions}
    assert set(promoted) == set(low)
    assert all(t.threshold == 30 for t in promoted.values())
    views = await store.read([(lead, T0) for lead in control + low])
    assert [v.stage for v in views if v] == ["lead"] * 3 + ["mql"] * 3
    validator = jsonschema.Draft202012Validator(load_schema("handoff.schema.json"), format_checker=jsonschema.FormatChecker())
    for t in promoted.values():
        record = handoff.build(model, t)
        validator.validate(record)
        assert record["arm"] == "mql_bar/low"
    # Decay and the low arm's floor (30 - hysteresis 10): the sweep demotes by the arm's bars.
    swept = await store.sweep(T0 + 400 * 86_400_000)
    assert {t.lead_id for t in swept if t.kind == "demoted"} == set(low)



async def test_outcome_records_name_the_arm_its_handoffs_do(redis: Redis) -> None:
    model = model_with(HALVES)
    split = experiments.split(model)
    assert split is not None
    leads = [f"o-{i}" for i in range(16)]
    arms = {lead: split.arm_of(lead) for lead in leads}
    assert set(arms.values()) == {"mql_bar/control", "mql_bar/low"}
    store = LeadStore(redis, model)
    # 50 points: an MQL in the low arm (bar 30), a lead in the control arm (bar 60)
    await store.apply([(event("web", "demo_request", T0, lead=lead), f"w:0:{i}") for i, lead in enumerate(leads)], now=T0)
    result = await store.apply([(event("crm", "lost", T0 + 1000, lead=lead), f"c:0:{i}") for i, lead in enumerate(leads)],
                               now=T0 + 1000)
    validator = jsonschema.Draft202012Validator(load_schema("outcome.schema.json"), format_checker=jsonschema.FormatChecker())
    records = {r["lead_id"]: r for r in (outcome_record(model, snap) for snap in result.crm)}
    assert sorted(records) == sorted(leads)
    for lead, record in records.items():
        validator.validate(record)
        assert record["arm"] == arms[lead]
        # the stage before the outcome is the one the lead's arm decided
        assert record["stage"] == ("mql" if arms[lead] == "mql_bar/low" else "lead")
    plain = parse_model(files("leadpulse").joinpath("default_model.yaml").read_text(encoding="utf-8"))
    assert outcome_record(plain, result.crm[0])["arm"] is None  # no experiment: no arm

# --- the report ------------------------------------------------------------------------------

def wilson(c: int, n: int) -> tuple[float, float]:
    z = 1.959963984540054
    p = c / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def arm_outcomes(experiment: str, arm: str, won: int, lost: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(won + lost):
        lead = f"{experiment}-{arm}-{i}"
        rows.append(outcome(f"o-{lead}", lead, "won" if i < won else "lost", 10, model_version="ab-1",
                            arm=f"{experiment}/{arm}"))
    return rows


@pytest.fixture(scope="module")
def ab_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, str]:
    tmp = tmp_path_factory.mktemp("abreport")
    rows = (arm_outcomes("big", "control", 40, 160) + arm_outcomes("big", "low", 70, 130)
            + arm_outcomes("tiny", "control", 1, 5) + arm_outcomes("tiny", "low", 3, 2)
            + arm_outcomes("flat", "control", 400, 1600) + arm_outcomes("flat", "low", 405, 1595))
    result = CliRunner().invoke(main, ["report", "--out", str(tmp / "out"), "--outcomes", str(write(tmp / "o.jsonl", rows))])
    assert result.exit_code == 0, result.output
    data = orjson.loads((tmp / "out" / "report.json").read_bytes())
    return data, result.output, (tmp / "out" / "report.html").read_text()


def experiment(data: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [e for e in data["experiments"] if e["experiment"] == name]
    return found


def test_report_conversion_per_arm_with_wilson_intervals(ab_report: tuple[dict[str, Any], str, str]) -> None:
    big = experiment(ab_report[0], "big")
    assert big["control"] == "control"
    rows = {a["arm"]: a for a in big["arms"]}
    assert (rows["control"]["resolved"], rows["control"]["converted"]) == (200, 40)
    assert (rows["low"]["resolved"], rows["low"]["converted"]) == (200, 70)
    assert rows["low"]["rate"] == pytest.approx(0.35)
    for arm, (c, n) in (("control", (40, 200)), ("low", (70, 200))):
        assert rows[arm]["ci95"] == pytest.approx(wilson(c, n), abs=1e-9)


def test_report_a_clear_difference_is_significant(ab_report: tuple[dict[str, Any], str, str]) -> None:
    (cmp,) = experiment(ab_report[0], "big")["comparisons"]
    pooled = 110 / 400
    z = (0.35 - 0.20) / math.sqrt(pooled * (1 - pooled) * (2 / 200))
    assert cmp["test"] == "two_proportion_z"
    assert cmp["p_value"] == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-9)
    assert cmp["difference"] == pytest.approx(0.15)
    assert cmp["verdict"] == "different" and "low converts better" in cmp["why"]


def test_report_says_when_the_sample_is_too_small(ab_report: tuple[dict[str, Any], str, str]) -> None:
    (cmp,) = experiment(ab_report[0], "tiny")["comparisons"]
    # Expected counts under 5: Fisher's exact test, its two-sided p summed here by hand over
    # the tables with the same margins no likelier than the one observed (1/6 vs 3/5).
    assert cmp["test"] == "fisher_exact"
    n1, n2, k = 6, 5, 4

    def prob(a: int) -> float:
        return math.comb(n1, a) * math.comb(n2, k - a) / math.comb(n1 + n2, k)

    seen = prob(1)
    p = sum(prob(a) for a in range(0, k + 1) if k - a <= n2 and prob(a) <= seen * (1 + 1e-7))
    assert cmp["p_value"] == pytest.approx(p, rel=1e-9)
    assert cmp["p_value"] > 0.05
    assert cmp["verdict"] == "too small to conclude"
    assert cmp["needed_per_arm"] > 6 and str(cmp["needed_per_arm"]) in cmp["why"]


def test_report_a_large_sample_without_a_difference_concludes_there_is_none(ab_report: tuple[dict[str, Any], str, str]) -> None:
    (cmp,) = experiment(ab_report[0], "flat")["comparisons"]
    assert cmp["test"] == "two_proportion_z" and cmp["p_value"] > 0.05
    # 20 % vs 25 %, alpha 0.05, power 0.8: the textbook formula gives 1094 per arm
    p1, p2 = 0.2, 0.25
    bar = (p1 + p2) / 2
    need = math.ceil(((1.959963984540054 * math.sqrt(2 * bar * (1 - bar))
                       + 0.8416212335729143 * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) / 0.05) ** 2)
    assert cmp["needed_per_arm"] == need == 1094
    assert cmp["verdict"] == "no difference of 5% or more"


def test_report_prints_and_draws_the_verdicts(ab_report: tuple[dict[str, Any], str, str]) -> None:
    data, output, html = ab_report
    assert "experiment big (control control):" in output
    assert "low vs control: different, two_proportion_z" in output
    assert "low vs control: too small to conclude, fisher_exact" in output
    assert html.count("<h2>A/B test ") == 3 and "Wilson" in html
    assert "Fisher" in data["definitions"]["experiments"]


def test_check_model_warns_of_arms_that_score_alike_and_shows_the_split(tmp_path: Path) -> None:
    data = yaml.safe_load(files("leadpulse").joinpath("default_model.yaml").read_text(encoding="utf-8"))
    data["experiments"] = [{"name": "mql_bar", "arms": [*HALVES, {"name": "same", "share": 100}]}]
    path = tmp_path / "alike.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(main, ["check-model", "--strict", str(path)])
    assert result.exit_code == 1
    assert "experiments[0].arms[2]: arm 'same' scores and stages leads as arm 'control' does" in result.output
    result = CliRunner().invoke(main, ["check-model", str(path)])
    assert "experiment mql_bar: control 25%, low 25% (mql≥30), same 50%" in result.output


def test_diff_says_an_experiment_started_changed_and_ended() -> None:
    from leadpulse.modeldiff import changes

    plain = parse_model(files("leadpulse").joinpath("default_model.yaml").read_text(encoding="utf-8"))
    started = model_with(HALVES)
    wider = model_with([{"name": "control", "share": 1}, {"name": "low", "share": 3, "stages": {"mql": {"min_score": 40}}}])
    assert [str(c) for c in changes(plain, started)][-1] == "experiment mql_bar started: control 50%, low 50% (mql 30)"
    assert [str(c) for c in changes(started, wider)] == [
        "experiment mql_bar: control 50%, low 50% (mql 30) -> control 25%, low 75% (mql 40)"]
    assert [str(c) for c in changes(started, plain)][-1] == "experiment mql_bar ended (was control 50%, low 50% (mql 30))"


async def test_starting_an_experiment_decides_idle_leads_again_by_their_arm(redis: Redis) -> None:
    from leadpulse import reeval

    plain = parse_model(files("leadpulse").joinpath("default_model.yaml").read_text(encoding="utf-8"))
    started = model_with(HALVES)
    split = experiments.split(started)
    assert split is not None
    assert reeval.may_demote_or_promote(plain, started) and reeval.may_promote(plain, started)
    leads = [f"idle-{i}" for i in range(12)]
    store = LeadStore(redis, plain)
    result = await store.apply([(event("web", "demo_request", T0, lead=lead), f"web:0:{i}") for i, lead in enumerate(leads)], now=T0)
    assert result.transitions == []  # 50 points: under the MQL bar of 60
    store.use_model(started)  # a hot reload (models.py) to the model with the experiment
    decided = await reeval.decide(store, leads, T0 + 1000)
    assert decided and len(decided) < len(leads)  # both arms hold some of these leads
    assert sorted(t.lead_id for t in decided) == sorted(lead for lead in leads if split.arm_of(lead) == "mql_bar/low")
    assert all(t.kind == "promoted" and t.threshold == 30 and t.event_id is None for t in decided)


async def test_an_arm_may_weigh_categories_and_grade_fit_its_own_way(redis: Redis) -> None:
    model = model_with([{"name": "control", "share": 1},
                        {"name": "heavy", "share": 1, "categories": {"behavioral": {"weight": 2}}, "grades": {"A": 5, "B": 3, "C": 1}}])
    split = experiments.split(model)
    assert split is not None
    heavy = split.models["mql_bar/heavy"]
    assert heavy.categories["behavioral"].weight == 2 and heavy.categories["engagement"].weight == 1
    assert heavy.fit.grades == {"A": 5, "B": 3, "C": 1} and heavy.rules == model.rules
    leads = [f"w-{i}" for i in range(20)]
    store = LeadStore(redis, model)
    # a few fit points: under the model a would-be D with 1 of its fit traits known, so U
    # (fit.unknown_below); A in `heavy`, whose grade bars the 8 points clear
    traits = {"seniority": "manager"}
    await store.apply([(event("profile", "identify", T0, lead=lead, traits=traits), f"p:0:{i}") for i, lead in enumerate(leads)]
                      + [(event("web", "demo_request", T0 + 1, lead=lead), f"w:0:{i}") for i, lead in enumerate(leads)], now=T0)
    views = {v.lead_id: v for v in await store.read([(lead, T0 + 1) for lead in leads]) if v}
    arms = {lead: split.arm_of(lead) for lead in leads}
    assert set(arms.values()) == {"mql_bar/control", "mql_bar/heavy"}
    for lead, arm in arms.items():
        why = views[lead].explanation
        if arm == "mql_bar/heavy":  # 50 behavioral points weigh 100: over the MQL bar
            assert why.breakdown["behavioral"] == pytest.approx(100, abs=0.01) and views[lead].stage == "mql"
            assert why.fit_grade == "A"
        else:
            assert why.breakdown["behavioral"] == pytest.approx(50, abs=0.01) and views[lead].stage == "lead"
            assert why.fit_grade == "U"
