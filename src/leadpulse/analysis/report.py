"""The report's numbers: what happened to leads, by score band, fit grade, stage and funnel step.

Everything is computed per lead from the outcome records (leads.outcomes) and, when given, the
handoff records (leads.handoff); `DEFINITIONS` says precisely what each figure counts, and the
page and docs/calibration.md quote it. The same dict is report.json and feeds report.html.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..handoff import iso
from . import arms
from .bands import by_decile, rate
from .outcomes import NEGATIVE_DEFAULT, POSITIVE_DEFAULT, Handoff, Outcome, Records, deciding

HOUR = 3_600_000
STEPS = ("lead", "mql", "sql", "sal", "opportunity", "won")
#: the funnel steps an outcome records (the first such outcome is the step's time)
OUTCOME_STEPS = {"sal": "sql_accepted", "opportunity": "opportunity_created", "won": "won"}
UNKNOWN = "(unknown)"

DEFINITIONS = {
    "lead": "A lead with at least one outcome or handoff record in the input. Leads that never produced either are not in these topics and not counted anywhere.",
    "resolved": "A lead with a positive outcome ({positive}) or a negative one ({negative}). Its deciding outcome is its first positive outcome, else its first negative one; leads with neither are still open and left out of every conversion rate.",
    "conversion_rate": "Resolved leads whose label is positive ÷ resolved leads, in the same band, grade or stage.",
    "score_decile": "Deciles of the score on the deciding outcome (the lead's score at that instant, before the outcome), among the resolved leads of the group: decile = ⌊10·r/n⌋ + 1 with r the number of leads scoring strictly lower, so tied scores share a decile and decile 10 is the highest. Leads whose deciding outcome was scored by another model version than their group's are left out of the deciles (and counted).",
    "lift": "A band's conversion rate ÷ the group's conversion rate.",
    "stage_at_handoff": "The highest handoff stage the lead had reached before its deciding outcome: sql, mql, or none (never handed off). Known from the handoff records or the outcome's mql_at/sql_at; unknown when neither is given (a label file).",
    "fit_grade": "The fit grade on the deciding outcome (A-D; U: too little known to grade, docs/scoring.md §5; unknown: not recorded).",
    "funnel": "A lead counts at a step when it reached that step or any later one (a CRM may skip recording a step): mql and sql from promotions in the handoffs or mql_at/sql_at; sal = sql_accepted; opportunity = opportunity_created; won = won. Step rate = leads at the step ÷ leads at the step before; 'implied' counts leads at the step with no record of it. Median time between two steps: over leads with a recorded time for both, the later not before the earlier (a step's time is its first record).",
    "acceptance_rate": "sql_accepted outcomes ÷ (sql_accepted + sql_rejected outcomes).",
    "sla": "Each promotion into sql (handoff) or sql_at on an outcome starts an SQL; sales answers it with the lead's first sql_accepted or sql_rejected at or after it (before the lead's next SQL). A breach: answered later than the SLA, or not answered and older than the SLA at the report's as-of time (the latest record in the input unless --as-of). Breach rate = breaches ÷ SQLs.",
    "group": "Each lead is reported under the model_version (and experiment arm) of its earliest record that names one: the model that scored it first.",
}


@dataclass
class _Lead:
    lead_id: str
    outcomes: list[Outcome] = field(default_factory=list)
    handoffs: list[Handoff] = field(default_factory=list)
    group: tuple[str, str | None] = (UNKNOWN, None)
    label: bool | None = None
    deciding: Outcome | None = None
    times: dict[str, int | None] = field(default_factory=dict)
    reached: int = 0  # index in STEPS of the furthest step reached


def _first(values: Sequence[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def _leads(records: Records, positive: Sequence[str], negative: Sequence[str], mql: str, sql: str) -> list[_Lead]:
    leads: dict[str, _Lead] = {}
    for o in records.outcomes:
        leads.setdefault(o.lead_id, _Lead(o.lead_id)).outcomes.append(o)
    for h in records.handoffs:
        leads.setdefault(h.lead_id, _Lead(h.lead_id)).handoffs.append(h)
    for lead in leads.values():
        lead.outcomes.sort(key=lambda o: (o.at, o.outcome_id))
        lead.handoffs.sort(key=lambda h: (h.at, h.handoff_id))
        named = sorted(
            [(o.at, o.model_version, o.arm) for o in lead.outcomes if o.model_version]
            + [(h.at, h.model_version, h.arm) for h in lead.handoffs],
            key=lambda x: x[0],
        )
        if named:
            lead.group = (str(named[0][1]), named[0][2])
        decided = deciding(lead.outcomes, positive, negative).get(lead.lead_id)
        if decided is not None:
            lead.label, lead.deciding = decided
        promoted = [h for h in lead.handoffs if h.kind == "promoted"]
        kind_at = {k: _first([o.at for o in lead.outcomes if o.outcome == k]) for k in OUTCOME_STEPS.values()}
        lead.times = {
            "lead": _first([o.first_seen_at for o in lead.outcomes]),
            "mql": _first([h.at for h in promoted if h.stage in (mql, sql)]
                          + [o.mql_at for o in lead.outcomes] + [o.sql_at for o in lead.outcomes]),
            "sql": _first([h.at for h in promoted if h.stage == sql] + [o.sql_at for o in lead.outcomes]),
            **{step: kind_at[kind] for step, kind in OUTCOME_STEPS.items()},
        }
        lead.reached = max(i for i, step in enumerate(STEPS) if i == 0 or lead.times[step] is not None)
    return sorted(leads.values(), key=lambda x: x.lead_id)


def _conversion(leads: list[_Lead], key: Any, order: Sequence[str] = ()) -> list[dict[str, Any]]:
    counts: dict[str, list[int]] = {}
    for lead in leads:
        slot = counts.setdefault(key(lead), [0, 0])
        slot[0] += 1
        slot[1] += int(bool(lead.label))
    rank = {v: i for i, v in enumerate(order)}
    return [
        {"value": k, "leads": n, "converted": c, "rate": rate(c, n)}
        for k, (n, c) in sorted(counts.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))
    ]


def _stage_at_handoff(lead: _Lead) -> str:
    assert lead.deciding is not None
    known = bool(lead.handoffs) or any(o.lifecycle for o in lead.outcomes)
    if not known:
        return UNKNOWN
    at = lead.deciding.at
    for step in ("sql", "mql"):
        t = lead.times[step]
        if t is not None and t <= at:
            return step
    return "none"


def _hours(ms: float | None) -> float | None:
    return None if ms is None else ms / HOUR


def _median_hours(deltas: list[int]) -> float | None:
    return _hours(statistics.median(deltas)) if deltas else None


def _funnel(leads: list[_Lead]) -> list[dict[str, Any]]:
    out = []
    for i, step in enumerate(STEPS):
        at_step = [lead for lead in leads if lead.reached >= i]
        row: dict[str, Any] = {
            "step": step, "leads": len(at_step),
            "implied": sum(1 for lead in at_step if lead.times[step] is None) if i else 0,
            "rate_from_previous": rate(len(at_step), out[-1]["leads"]) if i else None,
            "rate_from_lead": rate(len(at_step), len(leads)),
        }
        if i:
            prev = STEPS[i - 1]
            deltas = [
                t1 - t0 for lead in at_step
                if (t0 := lead.times[prev]) is not None and (t1 := lead.times[step]) is not None and t1 >= t0
            ]
            row["median_hours_from_previous"] = _median_hours(deltas)
            row["timed_pairs"] = len(deltas)
        out.append(row)
    return out


@dataclass(frozen=True)
class _Opts:
    sla_ms: int
    as_of: int
    sql_stage: str


def _sla(leads: list[_Lead], opts: _Opts) -> dict[str, Any]:
    sla_ms, as_of = opts.sla_ms, opts.as_of
    episodes = within = late = open_ok = open_late = 0
    responses: list[int] = []
    for lead in leads:
        starts = sorted({h.at for h in lead.handoffs if h.kind == "promoted" and h.stage == opts.sql_stage}
                        | {o.sql_at for o in lead.outcomes if o.sql_at is not None})
        verdicts = [o.at for o in lead.outcomes if o.outcome in ("sql_accepted", "sql_rejected")]
        for n, start in enumerate(starts):
            end = starts[n + 1] if n + 1 < len(starts) else None
            answer = next((v for v in verdicts if v >= start and (end is None or v < end)), None)
            episodes += 1
            if answer is not None:
                responses.append(answer - start)
                if answer - start > sla_ms:
                    late += 1
                else:
                    within += 1
            elif as_of - start > sla_ms:
                open_late += 1
            else:
                open_ok += 1
    return {
        "sla_hours": sla_ms / HOUR, "sqls": episodes, "answered_within_sla": within,
        "answered_late": late, "open_within_sla": open_ok, "open_past_sla": open_late,
        "breaches": late + open_late, "breach_rate": rate(late + open_late, episodes),
        "median_response_hours": _median_hours(responses),
    }


def _acceptance(leads: list[_Lead]) -> dict[str, Any]:
    verdicts = [o for lead in leads for o in lead.outcomes if o.outcome in ("sql_accepted", "sql_rejected")]
    accepted = sum(1 for o in verdicts if o.outcome == "sql_accepted")
    reasons = Counter(o.reason or "(no reason given)" for o in verdicts if o.outcome == "sql_rejected")
    return {
        "accepted": accepted, "rejected": len(verdicts) - accepted,
        "rate": rate(accepted, len(verdicts)),
        "rejection_reasons": [{"reason": r, "count": c} for r, c in sorted(reasons.items(), key=lambda x: (-x[1], x[0]))],
    }


def _group(name: str, arm: str | None, leads: list[_Lead], opts: _Opts, versions: set[str | None] | None) -> dict[str, Any]:
    """`versions`: the model versions whose scores may share the deciles (None: any; empty:
    none, when the leads were scored by several models)."""
    resolved = [lead for lead in leads if lead.label is not None]
    positives = sum(1 for lead in resolved if lead.label)
    scored = [
        lead for lead in resolved
        if lead.deciding is not None and lead.deciding.score is not None
        and (versions is None or lead.deciding.model_version in versions)
    ]
    return {
        "model_version": name, "arm": arm, "leads": len(leads), "resolved": len(resolved),
        "converted": positives, "open": len(leads) - len(resolved),
        "conversion_rate": rate(positives, len(resolved)),
        "by_score_decile": by_decile(
            [lead.deciding.score for lead in scored],  # type: ignore[union-attr,misc]
            [bool(lead.label) for lead in scored],
        ),
        "scored_by_another_model": sum(
            1 for lead in resolved if lead.deciding is not None and lead.deciding.score is not None
        ) - len(scored),
        "by_stage_at_handoff": _conversion(resolved, _stage_at_handoff, ("none", "mql", "sql")),
        "by_fit_grade": _conversion(resolved, lambda lead: lead.deciding.fit_grade or UNKNOWN),
        "funnel": _funnel(leads),
        "acceptance": _acceptance(leads),
        "sla": _sla(leads, opts),
    }


def build(
    records: Records, *, positive: Sequence[str] = POSITIVE_DEFAULT, negative: Sequence[str] = NEGATIVE_DEFAULT,
    sla_hours: float = 48.0, as_of: int | None = None, mql_stage: str = "mql", sql_stage: str = "sql",
    control: str = "control", min_effect: float = arms.MIN_EFFECT,
) -> dict[str, Any]:
    """The report as one JSON-ready dict: per group (model_version, arm), and all leads."""
    leads = _leads(records, positive, negative, mql_stage, sql_stage)
    times = [o.at for o in records.outcomes] + [h.at for h in records.handoffs]
    as_of = as_of if as_of is not None else max(times, default=0)
    opts = _Opts(round(sla_hours * HOUR), as_of, sql_stage)
    keys = sorted({lead.group for lead in leads}, key=lambda g: (g[0], g[1] or ""))
    groups = [
        _group(name, arm, [lead for lead in leads if lead.group == (name, arm)], opts, {None, name})
        for name, arm in keys
    ]
    versions = {name for name, _ in keys}
    definitions = {k: v.format(positive=", ".join(positive), negative=", ".join(negative)) for k, v in DEFINITIONS.items()}
    definitions["experiments"] = arms.rule(min_effect)
    return {
        "as_of": iso(as_of) if times else None,
        "label": {"positive": list(positive), "negative": list(negative)},
        "input": {
            "outcomes": len(records.outcomes), "handoffs": len(records.handoffs),
            "duplicates": records.duplicates, "invalid": len(records.invalid),
            "invalid_examples": records.invalid[:20],
        },
        "all": _group("(all)", None, leads, opts, None if len(versions) <= 1 else set()),
        "groups": groups,
        # threshold A/B tests: each resolved lead under the arm of its group (its first record naming one)
        "experiments": arms.compare([(lead.group[1], bool(lead.label)) for lead in leads
                                     if lead.group[1] and lead.label is not None], control, min_effect),
        "definitions": definitions,
    }
