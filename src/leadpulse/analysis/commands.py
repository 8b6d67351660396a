"""`leadpulse report` and `leadpulse calibrate`: imported only when one of them runs (cli.py),
and light themselves; the work (scikit-learn, matplotlib) is imported inside each command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..cliopts import fails_cleanly, settings_from, settings_options
from ..errors import ConfigError

_FILE = click.Path(path_type=Path, dir_okay=False)
#: hours of the report's SLA when neither --sla nor the model's lifecycle.sla says
FALLBACK_SLA_HOURS = 48.0


def model_sla_hours(model_path: Path | None) -> float:
    """The sales SLA the model sets (lifecycle.sla, the one the worker's sla_overdue handoffs
    follow), in hours: the model at `model_path`, else the shipped one; FALLBACK_SLA_HOURS if none."""
    from ..model import load_model
    from .report import HOUR

    sla = load_model(model_path).lifecycle.sla
    return FALLBACK_SLA_HOURS if sla is None else sla / HOUR


def _names(value: str) -> tuple[str, ...]:
    from .outcomes import OUTCOMES

    names = tuple(x.strip() for x in value.split(",") if x.strip())
    bad = [x for x in names if x not in OUTCOMES]
    if bad or not names:
        raise ConfigError(f"unknown outcome {', '.join(bad) or '(none)'}: give some of {', '.join(OUTCOMES)}")
    return names


def _instant(value: str | None) -> int | None:
    if value is None:
        return None
    from ..events import parse_time

    try:
        return parse_time(value)
    except Exception:
        raise ConfigError(f"--as-of {value!r} is not an RFC 3339 date-time with an offset") from None


@click.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), required=True, help="directory for report.html and report.json")
@click.option("--outcomes", type=_FILE, default=None, help="outcome records (JSONL) instead of the outcomes topic")
@click.option("--handoffs", type=_FILE, default=None, help="handoff records (JSONL) instead of the handoff topic")
@click.option("--positive", default="won", show_default=True, help="outcomes that make a lead converted (comma-separated)")
@click.option("--negative", default="lost,sql_rejected", show_default=True, help="outcomes that make a lead not converted")
@click.option("--sla", "sla_hours", type=click.FloatRange(min=0, min_open=True), default=None,
              help="hours sales has to accept or reject an SQL  [default: the model's lifecycle.sla "
                   f"(--model, else the shipped model); {FALLBACK_SLA_HOURS:g} when it sets none]")
@click.option("--as-of", default=None, help="judge open SQLs against this instant (default: the latest record)")
@click.option("--mql-stage", default="mql", show_default=True, help="the model's MQL stage name")
@click.option("--sql-stage", default="sql", show_default=True, help="the model's SQL stage name")
@click.option("--control", default="control", show_default=True, help="the A/B test arm the others are compared with")
@click.option("--min-effect", type=click.FloatRange(0.001, 1), default=0.05, show_default=True,
              help="the smallest difference in conversion rate an A/B test must be able to find to conclude")
@settings_options
@fails_cleanly
def report(
    out_dir: Path, outcomes: Path | None, handoffs: Path | None, positive: str, negative: str, sla_hours: float | None,
    as_of: str | None, mql_stage: str, sql_stage: str, control: str, min_effect: float, **options: Any,
) -> None:
    """What happened to scored leads: conversion by score band, grade and stage, the funnel,
    sales acceptance and SLA breaches, per model version. Writes report.html and report.json."""
    import orjson

    from . import outcomes as records_in
    from .render import experiment_lines, render
    from .report import build

    settings = settings_from(options)  # its model's SLA even when the records come from files
    if sla_hours is None:
        sla_hours = model_sla_hours(settings.model)
    records = records_in.load(settings if outcomes is None else None, outcomes, handoffs)
    data = build(
        records, positive=_names(positive), negative=_names(negative), sla_hours=sla_hours,
        as_of=_instant(as_of), mql_stage=mql_stage, sql_stage=sql_stage, control=control, min_effect=min_effect,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    (out_dir / "report.html").write_text(render(data), encoding="utf-8")
    whole = data["all"]
    click.echo(
        f"{out_dir / 'report.html'}: {whole['leads']} leads, {whole['resolved']} resolved, "
        f"conversion {_pct(whole['conversion_rate'])}, {len(data['groups'])} model group(s)"
        + (f"; {len(records.invalid)} invalid records skipped" if records.invalid else "")
    )
    for experiment in data["experiments"]:
        click.echo(experiment_lines(experiment))
    if records.invalid:
        click.echo(f"leadpulse: {len(records.invalid)} invalid records, first: {records.invalid[0]}", err=True)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"




@click.command()
@click.option("--events", "events_path", type=_FILE, required=True, help="the leads' events (JSONL, event contract)")
@click.option("--outcomes", "outcomes_path", type=_FILE, required=True, help="their outcomes (JSONL, outcome contract)")
@click.option("--out", "out_path", type=_FILE, required=True, help="where to write the candidate model YAML")
@click.option("--model", "model_path", type=_FILE, default=None, help="the current model (default: the shipped model)")
@click.option("--holdout", type=click.FloatRange(0.05, 0.9), default=0.3, show_default=True, help="share of labelled leads kept out of learning")
@click.option("--seed", type=int, default=7, show_default=True, help="seed of the training/holdout split")
@click.option("--positive", default="won", show_default=True, help="outcomes that make a lead positive (comma-separated)")
@click.option("--negative", default="lost,sql_rejected", show_default=True, help="outcomes that make a lead negative")
@click.option("--max-rules", type=click.IntRange(1, 500), default=30, show_default=True, help="most rules the candidate may have")
@click.option("--points-per-doubling", type=click.FloatRange(1, 1000), default=20.0, show_default=True, help="points that double the odds of a positive outcome")
@click.option("--mql-target", default="lift:1.5", show_default=True, help="MQL threshold: lift:X (the band converts at X × base), rate:P, or per-week:N")
@click.option("--sql-target", default="lift:3", show_default=True, help="SQL threshold, as --mql-target")
@click.option("--decay", type=click.Choice(["keep", "none"]), default="keep", show_default=True, help="keep the current categories' decay, or none (history without meaningful times)")
@click.option("--min-support", type=click.IntRange(1), default=None, help="leads a candidate rule must hold for (default: 0.5 % of the training leads, at least 10)")
@click.option("--redis-url", default=None, help="a Redis for the engine replay (a private key prefix, deleted after); default: start a redis-server")
@click.option("--json", "as_json", is_flag=True, help="print the figures as one JSON document")
@fails_cleanly
def calibrate(
    events_path: Path, outcomes_path: Path, out_path: Path, model_path: Path | None, holdout: float, seed: int,
    positive: str, negative: str, max_rules: int, points_per_doubling: float, mql_target: str, sql_target: str,
    decay: str, min_support: int | None, redis_url: str | None, as_json: bool,
) -> None:
    """Learn a readable points model from history and judge it, beside the current model, on
    holdout leads scored by the real engine. Writes a candidate YAML for `leadpulse check-model`."""
    import orjson

    from ..model import load_model
    from . import calibrate as learn
    from .candidate import Target

    try:
        targets = Target.parse(mql_target), Target.parse(sql_target)
    except ValueError as exc:
        raise ConfigError(f"--mql-target/--sql-target {exc}") from None
    opts = learn.Options(
        positive=_names(positive), negative=_names(negative), holdout=holdout, seed=seed, max_rules=max_rules,
        points_per_doubling=points_per_doubling, decay=decay == "keep", mql=targets[0], sql=targets[1],
        min_support=min_support, redis_url=redis_url,
    )
    result = learn.calibrate(events_path, outcomes_path, load_model(model_path), opts)
    out_path.write_text(result.yaml, encoding="utf-8")
    summary = result.summary | {"candidate_path": str(out_path)}
    if as_json:
        click.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(_table(summary))


def _table(s: dict[str, Any]) -> str:
    h = s["holdout"]
    cur, cand = h["current"], h["candidate"]

    def num(v: Any, fmt: str = "{:.4f}") -> str:
        return "–" if v is None else fmt.format(v)

    lines = [
        f"candidate: {s['candidate_path']} ({s['rules']} rules: {s['engagement_rules']} engagement, {s['fit_rules']} fit; "
        f"MQL ≥ {s['thresholds']['mql']:g}, SQL ≥ {s['thresholds']['sql']:g})",
        f"holdout: {h['leads']} leads, {h['converted']} positive, scored by the engine",
        f"{'':24}{'current':>24}{'candidate':>24}",
        f"{'model version':24}{cur['model_version']:>24}{cand['model_version']:>24}",
        f"{'ROC AUC':24}{num(cur['auc']):>24}{num(cand['auc']):>24}",
        f"{'top-decile lift':24}{num(cur['top_decile_lift'], '{:.2f}×'):>24}{num(cand['top_decile_lift'], '{:.2f}×'):>24}",
    ]
    for stage in ("mql", "sql"):
        if stage in cur and stage in cand:
            def cell(x: dict[str, Any]) -> str:
                return f"{x['leads']} ({num(x['rate'], '{:.1%}')})"
            lines.append(f"{stage.upper() + ' reached (conv.)':24}{cell(cur[stage]):>24}{cell(cand[stage]):>24}")
    return "\n".join(lines)


@click.command()
@click.argument("candidate_path", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), required=True, help="directory for report.json and report.html")
@click.option("--events", "events_path", type=_FILE, default=None, help="events (JSONL) instead of the input topics up to their ends")
@click.option("--outcomes", "outcomes_path", type=_FILE, default=None, help="outcome records (JSONL) instead of the outcomes topic")
@click.option("--baseline", "baseline_path", type=_FILE, default=None, help="compare with this model (default: the active one)")
@click.option("--positive", default="won", show_default=True, help="outcomes that make a lead converted (comma-separated)")
@click.option("--negative", default="lost,sql_rejected", show_default=True, help="outcomes that make a lead not converted")
@click.option("--engine-redis", default=None, help="a Redis to replay in (private key prefixes, deleted after); default: start a redis-server")
@settings_options
@fails_cleanly
def backtest(
    candidate_path: Path, out_dir: Path, events_path: Path | None, outcomes_path: Path | None, baseline_path: Path | None,
    positive: str, negative: str, engine_redis: str | None, **options: Any,
) -> None:
    """Replay retained history through CANDIDATE beside the active model, in an isolated key
    space: MQL/SQL per week, score deciles, leads whose stage would change, conversion by score
    decile where outcomes exist. Writes report.json and report.html; publishes nothing."""
    import orjson

    from .backtest_run import run

    settings = settings_from(options)
    data = run(settings, candidate_path, out_dir, events_path=events_path, outcomes_path=outcomes_path,
               baseline_path=baseline_path, positive=_names(positive), negative=_names(negative), engine_redis=engine_redis)
    changes = data["stage_changes"]["count"]
    weeks = data["weeks"]
    click.echo(
        f"{out_dir / 'report.html'}: {data['input']['events']} events, models {data['models']['active']} (active) vs "
        f"{data['models']['candidate']} (candidate); stages now {orjson.dumps(data['stages']).decode()}; "
        f"{changes} leads would change stage over {len(weeks)} week(s)"
        + ("" if data["outcomes"] is None else f"; {data['outcomes']['leads']} leads with an outcome")
    )
