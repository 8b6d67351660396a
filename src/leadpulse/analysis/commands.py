"""`leadpulse report` and `leadpulse calibrate`: imported only when one of them runs (cli.py),
and light themselves; the work (scikit-learn, matplotlib) is imported inside each command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..cliopts import fails_cleanly, settings_from, settings_options
from ..errors import ConfigError

_FILE = click.Path(path_type=Path, dir_okay=False)


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
@click.option("--sla", "sla_hours", type=float, default=48.0, show_default=True, help="hours sales has to accept or reject an SQL")
@click.option("--as-of", default=None, help="judge open SQLs against this instant (default: the latest record)")
@click.option("--mql-stage", default="mql", show_default=True, help="the model's MQL stage name")
@click.option("--sql-stage", default="sql", show_default=True, help="the model's SQL stage name")
@settings_options
@fails_cleanly
def report(
    out_dir: Path, outcomes: Path | None, handoffs: Path | None, positive: str, negative: str, sla_hours: float,
    as_of: str | None, mql_stage: str, sql_stage: str, **options: Any,
) -> None:
    """What happened to scored leads: conversion by score band, grade and stage, the funnel,
    sales acceptance and SLA breaches, per model version. Writes report.html and report.json."""
    import orjson

    from . import outcomes as records_in
    from .render import render
    from .report import build

    settings = settings_from(options) if outcomes is None else None
    records = records_in.load(settings, outcomes, handoffs)
    data = build(
        records, positive=_names(positive), negative=_names(negative), sla_hours=sla_hours,
        as_of=_instant(as_of), mql_stage=mql_stage, sql_stage=sql_stage,
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
    if records.invalid:
        click.echo(f"leadpulse: {len(records.invalid)} invalid records, first: {records.invalid[0]}", err=True)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


