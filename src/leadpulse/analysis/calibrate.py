"""`leadpulse calibrate`: learn a readable points model from history, judge it on a holdout.

1. Label: each lead's deciding outcome (outcomes.deciding): positive (default won) or negative
   (default lost, sql_rejected); leads without either are left out and counted. Score time: the
   deciding outcome's occurred_at; only events before it count.
2. Split the labelled leads (stratified, seeded) into training and holdout.
3. On the training leads: candidate rules (features.py), a sparse L1 logistic regression whose
   regularisation is chosen by 5-fold cross-validated ROC AUC among those giving at most
   --max-rules rules, refitted lightly (L2) on the rules it kept; features the engine cannot give
   negative points (once, caps) are dropped when they come out negative, and the fit repeated.
4. Whole points (candidate.py), then the real engine scores the training leads with them and
   the MQL/SQL thresholds are chosen on those scores from the stated targets.
5. The real engine scores the holdout leads with the current model and with the candidate:
   ROC AUC, conversion by score decile, top-decile lift, MQL/SQL counts — replay.py, one truth.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, train_test_split

from ..errors import ConfigError
from ..model import ScoringModel, parse_model
from . import candidate, features, outcomes, replay
from .bands import by_decile, rate, top_decile_lift
from .features import Feature, History

WEEK = 604_800_000
CS = np.logspace(-2.5, 1.0, 29)


@dataclass
class Options:
    positive: Sequence[str] = outcomes.POSITIVE_DEFAULT
    negative: Sequence[str] = outcomes.NEGATIVE_DEFAULT
    holdout: float = 0.3
    seed: int = 7
    max_rules: int = 30
    points_per_doubling: float = 20.0
    decay: bool = True
    mql: candidate.Target = field(default_factory=lambda: candidate.Target("lift", 1.5))
    sql: candidate.Target = field(default_factory=lambda: candidate.Target("lift", 3.0))
    min_support: int | None = None
    redis_url: str | None = None


@dataclass
class Fitted:
    features: list[Feature]
    betas: list[float]
    intercept: float
    c: float
    cv_auc: float


def _lr(c: float, l1: bool) -> LogisticRegression:
    if l1:  # liblinear: exact zeros; a large intercept_scaling keeps the intercept unpenalised
        return LogisticRegression(l1_ratio=1.0, solver="liblinear", C=c, intercept_scaling=100.0, max_iter=2000, random_state=0)
    return LogisticRegression(l1_ratio=0.0, C=c, max_iter=5000)


def _cv_auc(x: np.ndarray, y: np.ndarray, c: float, seed: int) -> float:
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    aucs = []
    for train, test in folds.split(x, y):
        m = _lr(c, True).fit(x[train], y[train])
        aucs.append(roc_auc_score(y[test], m.decision_function(x[test])))
    return float(np.mean(aucs))


def _choose(x: np.ndarray, y: np.ndarray, budget: int, seed: int) -> tuple[float, float, np.ndarray]:
    """The C with the best cross-validated AUC among those whose fit keeps ≤ budget features."""
    best: tuple[float, float, np.ndarray] | None = None
    for c in CS:
        coef = _lr(c, True).fit(x, y).coef_[0]
        if np.count_nonzero(coef) > budget:
            break  # C grows: more features from here on
        if not np.count_nonzero(coef):
            continue
        auc = _cv_auc(x, y, c, seed)
        if best is None or auc > best[1] + 1e-4:
            best = (float(c), auc, coef)
    if best is None:
        raise ConfigError("no rule carries signal on the training leads (every fit is empty or too large)")
    return best


def fit(feats: list[Feature], x: np.ndarray, y: np.ndarray, budget: int, seed: int) -> Fitted:
    allowed = list(range(len(feats)))
    for _ in range(50):
        c, auc, coef = _choose(x[:, allowed], y, budget, seed)
        wrong = [j for j, b in zip(allowed, coef) if b < 0 and not feats[j].signed]
        if wrong:  # the engine cannot award negative capped or once points: learn without them
            allowed = [j for j in allowed if j not in wrong]
            continue
        kept = [j for j, b in zip(allowed, coef) if b != 0]
        break
    else:  # pragma: no cover - each round removes at least one column
        raise ConfigError("the fit did not settle")
    while True:  # light L2 refit on what L1 kept: less shrinkage, better-calibrated points
        m = _lr(1.0, False).fit(x[:, kept], y)
        wrong = [j for j, b in zip(kept, m.coef_[0]) if b < 0 and not feats[j].signed]
        if not wrong:
            break
        kept = [j for j in kept if j not in wrong]
    return Fitted([feats[j] for j in kept], [float(b) for b in m.coef_[0]], float(m.intercept_[0]), c, auc)


def _stages(model: ScoringModel, mql: float, sql: float, notes: tuple[str, str]) -> tuple[list[dict[str, Any]], float]:
    """The current ladder with new thresholds: stage 1 at the MQL, the last at the SQL threshold,
    any between spaced evenly. min_grade is dropped: the grades are rescaled."""
    if len(model.stages) < 3:
        raise ConfigError("calibrate sets an MQL and an SQL threshold: the current model needs at least 3 stages")
    floor = model.stages[0].min_score + 1  # stages must rise above the first
    mql = max(mql, floor)
    sql = max(sql, mql + 1)
    k = len(model.stages) - 1
    out = []
    for i, s in enumerate(model.stages):
        stage: dict[str, Any] = {"name": s.name, "min_score": s.min_score if i == 0 else round(mql + (sql - mql) * (i - 1) / (k - 1), 2)}
        if s.handoff:
            stage["handoff"] = True
        if s.description:
            stage["description"] = s.description
        if i == 1:
            stage["_note"] = notes[0]
        elif i == k:
            stage["_note"] = notes[1]
        out.append(stage)
    old = model.stages[1].min_score
    hysteresis = round(model.hysteresis * mql / old) if old > 0 and mql > 0 else 0
    return out, float(hysteresis)


def judge(model: ScoringModel, scored: dict[str, replay.Scored], leads: Sequence[History], scale: float | None = None, intercept: float | None = None) -> dict[str, Any]:
    """Holdout figures from the engine's scores: AUC, conversion by decile (observed; and, for
    the candidate, the probability its points stand for), top-decile lift, stage counts."""
    y = [h.label for h in leads]
    s = [scored[h.lead_id].score for h in leads]
    out: dict[str, Any] = {
        "model_version": model.version, "leads": len(leads), "converted": sum(y),
        "auc": float(roc_auc_score(y, s)) if 0 < sum(y) < len(y) else None,
        "top_decile_lift": top_decile_lift(s, y),
    }
    deciles = by_decile(s, y)
    if scale and intercept is not None:
        for row in deciles:
            members = [p for p in s if row["score_min"] <= p <= row["score_max"]]
            row["predicted"] = float(np.mean([1 / (1 + math.exp(-(intercept + p / scale))) for p in members]))
    out["by_decile"] = deciles
    positives = sum(y)
    for index, stage in enumerate(model.stages[1:], 1):
        reached = [h for h in leads if scored[h.lead_id].reached >= index]
        won = sum(1 for h in reached if h.label)
        out[stage.name] = {"leads": len(reached), "converted": won, "rate": rate(won, len(reached)), "captured": rate(won, positives)}
    return out


@dataclass
class Result:
    yaml: str
    summary: dict[str, Any]


def calibrate(events_path: Path, outcomes_path: Path, current: ScoringModel, opts: Options) -> Result:
    records = outcomes.collect(outcomes.jsonl(outcomes_path))
    decided = {lead: (label, o.at) for lead, (label, o) in outcomes.deciding(records.outcomes, opts.positive, opts.negative).items()}
    if len(decided) < 20:
        raise ConfigError(f"{outcomes_path}: {len(decided)} labelled leads; calibration needs at least 20")
    read = features.read_events(events_path)
    history = features.histories(read.events, decided)
    ids = sorted(history)
    labels = [history[i].label for i in ids]
    if sum(labels) < 5 or len(labels) - sum(labels) < 5:
        raise ConfigError("calibration needs at least 5 positive and 5 negative leads")
    train_ids, test_ids = train_test_split(ids, test_size=opts.holdout, random_state=opts.seed, stratify=labels)
    train = [history[i] for i in sorted(train_ids)]
    test = [history[i] for i in sorted(test_ids)]
    support = opts.min_support or max(10, round(0.005 * len(train)))
    kinds = features.event_kinds(current, train, support, opts.decay)
    traits = features.trait_kinds(current, train, support)
    probe = features.probe(current, kinds, traits)
    hits = features.matches(probe, train)
    feats = features.design(kinds, traits, hits, support)
    x = features.columns(feats, hits, train)
    feats, x = features.distinct_columns(feats, x)
    y = np.array([h.label for h in train], dtype=int)
    fitted = fit(feats, x, y, opts.max_rules, opts.seed)
    scale = opts.points_per_doubling / math.log(2)
    learned = candidate.points(fitted.features, fitted.betas, scale)
    provisional, hyst = _stages(current, 1.0, 2.0, ("", ""))
    draft = candidate.render(current, learned, provisional, {"A": 3, "B": 2, "C": 1}, 0, opts.decay, [])
    return asyncio.run(_judged(current, learned, parse_model(draft, "candidate"), train, test, fitted, scale, opts, {
        "events": len(read.events), "invalid_events": len(read.invalid), "invalid_examples": read.invalid[:5],
        "outcomes": len(records.outcomes), "invalid_outcomes": len(records.invalid),
        "labelled_leads": len(decided), "positive": sum(labels),
        "unlabelled_leads": len({o.lead_id for o in records.outcomes} - set(decided)),
        "candidates": len(feats),
    }))


async def _judged(
    current: ScoringModel, learned: candidate.Learned, draft: ScoringModel, train: list[History], test: list[History],
    fitted: Fitted, scale: float, opts: Options, inputs: dict[str, Any],
) -> Result:
    async with replay.engine_redis(opts.redis_url) as redis:
        on_train = await replay.score(redis, draft, train)
        scores = [on_train[h.lead_id].score for h in train]
        labels = [h.label for h in train]
        times = [h.at for h in (*train, *test)]
        weeks = (max(times) - min(times)) / WEEK or None
        share = len(train) / (len(train) + len(test))
        mql, mql_note = candidate.threshold(scores, labels, opts.mql, share, weeks)
        sql, sql_note = candidate.threshold(scores, labels, opts.sql, share, weeks)
        stages, hyst = _stages(current, mql, sql, (f"MQL target {opts.mql}: {mql_note} (training leads)", f"SQL target {opts.sql}: {sql_note} (training leads)"))
        grade_points = candidate.grades([on_train[h.lead_id].fit_score for h in train])
        n_rules = len(learned.rules) + len(learned.fit)
        header = [
            f"LeadPulse candidate model, learned by `leadpulse calibrate` from {len(train)} training leads",
            f"({sum(labels)} positive: {', '.join(opts.positive)}; negative: {', '.join(opts.negative)}), {datetime.now(UTC):%Y-%m-%d}.",
            f"{n_rules} rules from {inputs['candidates']} candidates: sparse L1 logistic regression, C = {fitted.c:.4g}",
            f"(5-fold cross-validated ROC AUC {fitted.cv_auc:.4f} on the training leads), refitted with a light L2 penalty.",
            f"Points: {opts.points_per_doubling:g} points double the odds (log-odds × {scale:.3f}); a score S stands for",
            f"P(positive) ≈ 1 / (1 + exp(-({fitted.intercept:.4f} + S / {scale:.3f}))) - before whole-point rounding.",
            "Each rule's comment gives the feature it expresses and its log-odds; check with `leadpulse check-model`.",
        ]
        if learned.dropped:
            header.append(f"Learned but rounded to 0 points (left out): {'; '.join(learned.dropped)}.")
        text = candidate.render(current, learned, stages, grade_points, hyst, opts.decay, header)
        model = parse_model(text, "candidate")
        cand = await replay.score(redis, model, test)
        base = await replay.score(redis, current, test)
    summary = {
        "input": inputs,
        "train": {"leads": len(train), "converted": sum(labels), "cv_auc": fitted.cv_auc, "c": fitted.c},
        "holdout": {
            "leads": len(test), "converted": sum(h.label for h in test), "share": opts.holdout, "seed": opts.seed,
            "current": judge(current, base, test),
            "candidate": judge(model, cand, test, scale, fitted.intercept),
        },
        "rules": n_rules, "engagement_rules": len(learned.rules), "fit_rules": len(learned.fit),
        "dropped_rounding_to_zero": len(learned.dropped),
        "thresholds": {"mql": stages[1]["min_score"], "sql": stages[-1]["min_score"], "mql_target": str(opts.mql),
                       "sql_target": str(opts.sql), "hysteresis": hyst},
        "points_per_doubling": opts.points_per_doubling, "intercept": fitted.intercept,
        "version": model.version,
    }
    return Result(text, summary)
