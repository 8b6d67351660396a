"""`leadpulse backtest candidate.yaml`: retained history through the candidate and, beside it,
the active model, in key spaces of their own; what would change if the candidate went live.

Isolation: both models score in a redis-server started for the run (or, with --redis-url, under
private key prefixes deleted afterwards); nothing is published (there is no producer here) and
the live key space, the model registry and the handoff topic are only ever read. The events are
the input topics' records up to their ends (or a JSONL file). Figures (report.json):

  weeks      promotions into each handoff stage per ISO week of crossed_at, per model
  scores     the leads' score distribution at the end instant: deciles, min, max, mean
  stages     leads per stage at the end, and every lead whose stage differs (old/new stage
             and score), the largest score changes first
  outcomes   where outcome records exist: conversion by score decile for each model, each
             lead scored at its deciding outcome from the events before it (analysis/replay.py
             and bands.py, the report's and calibration's own code)
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from .. import events as contract
from ..events import Event
from ..handoff import iso, publishes
from ..keys import Keys
from ..model import ScoringModel
from ..state import LeadStore, Transition
from . import features, outcomes, replay
from .bands import by_decile, rate, top_decile_lift

BATCH = 2000
#: stage changes listed in report.json (all are counted)
MAX_LISTED = 1000


@dataclass
class History:
    """The events to replay, each with the wall-clock instant it counts as received at."""

    events: list[tuple[Event, str, int]] = field(default_factory=list)  # (event, position, arrival)
    invalid: list[str] = field(default_factory=list)
    end: int = 0  # the instant leads are compared at


def from_file(path: Any) -> History:
    read = features.read_events(path)
    ordered = sorted(read.events, key=lambda e: e.occurred_at)
    return History([(e, f"file:0:{i}", e.occurred_at) for i, e in enumerate(ordered)], read.invalid,
                   max((e.occurred_at for e in ordered), default=0))


def from_records(records: Sequence[Any], model: ScoringModel) -> History:
    """Topic records validated as the worker validates them (model's skew and age horizon)."""
    now = int(time.time() * 1000)
    out = History(end=now)
    for r in records:
        arrived = min(r.timestamp, now) if r.timestamp and r.timestamp > 0 else now
        try:
            if r.value is None:
                raise contract.InvalidEvent("empty", "the message has no value")
            event = contract.parse(r.value, now, model.clock_skew, contract.MAX_EVENT_BYTES, model.max_event_age, arrived)
        except contract.InvalidEvent as exc:
            out.invalid.append(f"{r.topic}:{r.partition}:{r.offset}: {exc}")
            continue
        out.events.append((event, f"{r.topic}:{r.partition}:{r.offset}", now))
    return out


@dataclass
class _Run:
    model: ScoringModel
    store: LeadStore
    transitions: list[Transition] = field(default_factory=list)


async def _replay(redis: Redis, model: ScoringModel, history: History, name: str) -> tuple[_Run, dict[str, Any]]:
    run = _Run(model, LeadStore(redis, model, Keys(f"lpbt-{uuid.uuid4().hex[:12]}-{name}")))
    items = history.events
    for start in range(0, len(items), BATCH):
        chunk = items[start : start + BATCH]
        result = await run.store.apply([(e, pos) for e, pos, _ in chunk], now=max(a for _, _, a in chunk))
        run.transitions.extend(result.transitions)
    while swept := await run.store.sweep(history.end):  # decay up to the end instant
        run.transitions.extend(swept)
        await run.store.ack(swept)
    leads = sorted({e.lead_id for e, _, _ in items if e.lead_id} | {t.lead_id for t in run.transitions})
    views: dict[str, Any] = {}
    for start in range(0, len(leads), 1000):
        part = leads[start : start + 1000]
        for lead, view in zip(part, await run.store.read([(lead, history.end) for lead in part])):
            if view is not None:
                views[lead] = view
    return run, views


def _week(ms: int) -> str:
    year, week, _ = datetime.fromtimestamp(ms / 1000, UTC).isocalendar()
    return f"{year}-W{week:02d}"


def _weeks(runs: dict[str, _Run]) -> list[dict[str, Any]]:
    counts: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: {name: Counter() for name in runs})
    for name, run in runs.items():
        for t in run.transitions:
            if t.kind == "promoted" and publishes(run.model, t):
                counts[_week(t.crossed_at)][name][run.model.stages[t.to_stage].name] += 1
    return [{"week": w, **{name: dict(c) for name, c in counts[w].items()}} for w in sorted(counts)]


def _distribution(scores: list[float]) -> dict[str, Any]:
    if not scores:
        return {"leads": 0}
    cuts = statistics.quantiles(scores, n=10, method="inclusive") if len(scores) > 1 else [scores[0]] * 9
    return {"leads": len(scores), "min": min(scores), "max": max(scores), "mean": statistics.fmean(scores),
            "deciles": {f"p{10 * (i + 1)}": v for i, v in enumerate(cuts)}}


async def _conversion(redis: Redis, models: dict[str, ScoringModel], history: History, records: outcomes.Records,
                      positive: Sequence[str], negative: Sequence[str]) -> dict[str, Any] | None:
    decided = {lead: (label, o.at) for lead, (label, o) in outcomes.deciding(records.outcomes, positive, negative).items()}
    if not decided:
        return None
    leads = list(features.histories([e for e, _, _ in history.events], decided).values())
    labels = [h.label for h in leads]
    out: dict[str, Any] = {"leads": len(leads), "converted": sum(labels), "base_rate": rate(sum(labels), len(labels)),
                           "invalid_records": len(records.invalid)}
    for name, model in models.items():
        scored = await replay.score(redis, model, leads)
        scores = [scored[h.lead_id].score for h in leads]
        out[name] = {"model_version": model.version, "by_score_decile": by_decile(scores, labels),
                     "top_decile_lift": top_decile_lift(scores, labels)}
    return out


async def backtest(redis: Redis, baseline: ScoringModel, candidate: ScoringModel, history: History,
                   records: outcomes.Records | None = None, positive: Sequence[str] = outcomes.POSITIVE_DEFAULT,
                   negative: Sequence[str] = outcomes.NEGATIVE_DEFAULT) -> dict[str, Any]:
    """The report (report.json) of `candidate` beside `baseline` over `history`, scored on
    `redis` under private prefixes that are deleted afterwards."""
    runs: dict[str, _Run] = {}
    views: dict[str, dict[str, Any]] = {}
    try:
        for name, model in (("active", baseline), ("candidate", candidate)):
            runs[name], views[name] = await _replay(redis, model, history, name)
        conversion = await _conversion(redis, {"active": baseline, "candidate": candidate}, history, records,
                                       positive, negative) if records is not None else None
    finally:
        for run in runs.values():
            await replay._forget(redis, run.store.keys.prefix)
    leads = sorted(views["active"].keys() | views["candidate"].keys())
    changed = []
    for lead in leads:
        a, c = views["active"].get(lead), views["candidate"].get(lead)
        if a is None or c is None or a.stage != c.stage:
            changed.append({"lead_id": lead, "active_stage": a.stage if a else None, "candidate_stage": c.stage if c else None,
                            "active_score": a.explanation.score if a else None,
                            "candidate_score": c.explanation.score if c else None})
    changed.sort(key=lambda r: -abs((r["candidate_score"] or 0) - (r["active_score"] or 0)))
    return {
        "as_of": iso(history.end) if history.end else None,
        "models": {"active": baseline.version, "candidate": candidate.version},
        "input": {"events": len(history.events), "invalid": len(history.invalid), "invalid_examples": history.invalid[:20]},
        "weeks": _weeks(runs),
        "scores": {name: _distribution([v.explanation.score for v in views[name].values()]) for name in runs},
        "stages": {name: dict(Counter(v.stage for v in views[name].values())) for name in runs},
        "stage_changes": {"count": len(changed), "listed": changed[:MAX_LISTED]},
        "outcomes": conversion,
    }
