"""`leadpulse` command line: worker, dev, produce, score, top, rescore, check-model here; collector,
alerts, bench, report, calibrate, backtest and the model commands (models, activate, rollback,
diff) in their own modules, imported when they run."""

from __future__ import annotations

import asyncio
import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from .cliopts import configure_logging, echo_config, fails_cleanly, print_config_option, settings_options
from .cliopts import settings_from as _settings
from .errors import ConfigError, LeadUnreadable
from .settings import Settings

if TYPE_CHECKING:
    from .model import ScoringModel


def _model(settings: Settings) -> ScoringModel:
    from .model import load_model

    return load_model(settings.model)


#: commands imported only when they run (or --help lists them): the offline analysis tools need
#: scikit-learn and matplotlib, and the collector, alerts and the benchmark are other processes
#: with their own dependencies (aiohttp servers) that `leadpulse worker` never loads
_LAZY = {
    "report": "leadpulse.analysis.commands:report",
    "calibrate": "leadpulse.analysis.commands:calibrate",
    "alerts": "leadpulse.alerts.command:alerts",
    "bench": "leadpulse.bench.cli:bench",
    "collector": "leadpulse.collector.command:collector",
    "models": "leadpulse.modelcli:models_command",
    "activate": "leadpulse.modelcli:activate",
    "rollback": "leadpulse.modelcli:rollback",
    "diff": "leadpulse.modelcli:diff",
    "backtest": "leadpulse.analysis.commands:backtest",
}


class _Commands(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *_LAZY])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in _LAZY:
            module, attr = _LAZY[name].split(":")
            command: click.Command = getattr(importlib.import_module(module), attr)
            return command
        return super().get_command(ctx, name)


@click.group(cls=_Commands)
@click.version_option(package_name="leadpulse")
def main() -> None:
    """LeadPulse: streaming, real-time B2B lead scoring."""


@main.command()
@click.option("--processes", default=1, show_default=True, type=click.IntRange(1, 256),
              help="worker processes in the group on this host; process i serves HTTP on --http-port + i")
@settings_options
@print_config_option
@fails_cleanly
def worker(processes: int, print_config: bool, **options: Any) -> None:
    """Consume events, score leads in Redis, publish handoffs; serve the HTTP API and metrics."""
    settings = _settings(options)
    model = _model(settings)
    if print_config:
        echo_config(settings.masked())
        return
    configure_logging(settings.log_level)
    if processes > 1:
        from .processes import Supervisor

        try:
            supervisor = Supervisor(settings, processes)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        sys.exit(supervisor.run())
    from .worker import run_worker

    run_worker(settings, model)


@main.command()
@click.option("--leads", default=200, show_default=True, help="simulated leads per wave")
@click.option("--rate", default=200.0, show_default=True, help="simulated events per second")
@click.option("--waves", default=0, show_default=True, help="waves of leads to simulate (0: until Ctrl-C)")
@click.option("--http-port", default=6066, show_default=True, help="HTTP API port")
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None, help="scoring model YAML")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="keep broker/Redis files here")
@fails_cleanly
def dev(leads: int, rate: float, waves: int, http_port: int, model_path: Path | None, data_dir: Path | None) -> None:
    """Everything on this machine: a Kafka-protocol broker, Redis, the worker and simulated traffic."""
    from .dev.runner import run_dev

    run_dev(leads=leads, rate=rate, waves=waves, http_port=http_port, model_path=model_path, data_dir=data_dir)


@main.command()
@click.argument("file", type=click.File("rb"), required=False)
@click.option("--leads", default=0, help="produce synthetic journeys for this many leads instead of a file")
@click.option("--seed", default=7, show_default=True, help="random seed of the synthetic journeys")
@click.option("--now/--as-recorded", default=False, help="stamp synthetic events with the current time")
@settings_options
@fails_cleanly
def produce(file: Any, leads: int, seed: int, now: bool, **options: Any) -> None:
    """Send events (a JSONL file, or synthetic journeys) to the input topics."""
    from .dev.produce import produce_events

    settings = _settings(options)
    if file is None and not leads:
        raise ConfigError("give a JSONL file (- for stdin) or --leads N")
    asyncio.run(produce_events(settings, file=file, leads=leads, seed=seed, restamp=now))


def _view_text(view: Any) -> str:
    from .handoff import iso

    why = view.explanation
    lines = [
        f"{view.lead_id}: score {why.score:.1f}  stage {view.stage}  fit grade {why.fit_grade} ({why.fit_score:+.0f})"
        f"  completeness {why.completeness:.0%}"
        + (f"  recycled: no promotion before {iso(view.cooldown_until)}" if view.cooldown_until else ""),
        "  breakdown: " + ", ".join(f"{k} {v:+.1f}" for k, v in why.breakdown.items()),
    ]
    for c in why.contributions:
        when = f"  (last {iso(c.last_occurred_at)})" if c.last_occurred_at else ""
        lines.append(f"  {c.points:+8.2f}  {c.rule_id:<28} {c.category}{when}")
    return "\n".join(lines)


def _read(settings: Settings, read: Callable[[Any, int], Any]) -> Any:
    """Run one read against the store at the current instant, closing the connection after."""
    from .redisconn import connect
    from .state import LeadStore

    from . import models
    from .keys import Keys

    async def run() -> Any:
        redis = connect(settings.redis_url.get_secret_value(), settings.redis_cluster)
        store = LeadStore(redis, await models.active_model(redis, Keys(cluster=settings.redis_cluster), _model(settings)))
        try:
            return await read(store, int(time.time() * 1000))
        except LeadUnreadable as exc:  # one lead's state is broken: say so, no traceback
            raise click.ClickException(str(exc)) from exc
        finally:
            await store.redis.aclose()

    return asyncio.run(run())


@main.command()
@click.argument("lead_id")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@settings_options
@fails_cleanly
def score(lead_id: str, as_json: bool, **options: Any) -> None:
    """A lead's score now, and why."""
    from .api import lead_json

    view = _read(_settings(options), lambda store, now: store.view(lead_id, now))
    if view is None:
        click.echo(f"leadpulse: no lead {lead_id!r}", err=True)
        sys.exit(1)
    click.echo(orjson.dumps(lead_json(view)).decode() if as_json else _view_text(view))


@main.command()
@click.option("--limit", default=10, show_default=True, help="how many leads")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@settings_options
@fails_cleanly
def top(limit: int, as_json: bool, **options: Any) -> None:
    """The hottest leads right now."""
    from .api import lead_json

    views = _read(_settings(options), lambda store, now: store.top(limit, now))
    if as_json:
        click.echo(orjson.dumps([lead_json(v) for v in views]).decode())
        return
    for v in views:
        why = v.explanation
        click.echo(f"{why.score:8.1f}  {v.stage:<5} {why.fit_grade} {why.completeness:4.0%}  {v.lead_id}")


@main.command()
@click.option("--drop-unretained", is_flag=True,
              help="drop leads and visitors none of whose events the topics retain (default: keep them as they are)")
@click.option("--hold-timeout", type=float, default=60.0, show_default=True,
              help="seconds to wait for every worker to hold (and to switch) before giving up")
@settings_options
@fails_cleanly
def rescore(drop_unretained: bool, hold_timeout: float, **options: Any) -> None:
    """Rebuild lead state from the input topics' retention into a fresh key space, then switch
    every worker over to it (idempotent; safe while workers run: docs/operations.md).

    Uses the active model. Publishes nothing: the handoffs it re-derives were published the
    first time, under the same ids.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .admin import rescore as run

    settings = _settings(options)
    model = _active_model(settings)
    with Progress(TextColumn("rescoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as progress:
        task = progress.add_task("events", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        result = asyncio.run(run(settings, model, on_progress=advance, carry=not drop_unretained,
                                 hold_timeout=hold_timeout))
    skipped = ", ".join(f"{reason} {n}" for reason, n in result.skipped.most_common())
    click.echo(
        f"rescored {result.events} events with model {model.version}: {result.scored} applied, "
        f"{result.duplicates} duplicates or refused, {result.invalid} invalid (skipped{': ' + skipped if skipped else ''}), "
        f"{result.transitions} stage transitions re-derived"
    )
    click.echo(
        f"switched {result.previous} -> {result.space}: {result.tombstones} tombstones carried over, "
        f"{result.carried} leads/visitors with no retained event kept as they were, {result.workers} worker(s) held "
        f"{result.held_ms:.0f} ms while {result.tail} events were applied; "
        + ("old space kept (a worker did not confirm the switch; the next rescore deletes it)" if result.deleted is None
           else f"{result.deleted} keys of the old space deleted")
    )


def _active_model(settings: Settings) -> ScoringModel:
    """The model active in Redis (models.py), or the configured one when none was activated."""
    from . import models
    from .keys import Keys
    from .redisconn import connect

    async def run() -> ScoringModel:
        redis = connect(settings.redis_url.get_secret_value(), settings.redis_cluster)
        try:
            return await models.active_model(redis, Keys(cluster=settings.redis_cluster), _model(settings))
        finally:
            await redis.aclose()

    return asyncio.run(run())


@main.command("check-model")
@click.argument("path", type=click.Path(path_type=Path), required=False)
@click.option("--strict", is_flag=True, help="fail (exit code 1) on warnings too")
@fails_cleanly
def check_model(path: Path | None, strict: bool) -> None:
    """Validate a scoring model YAML (default: the shipped model), warn about what cannot work
    as written (a type no event has, an unknown property or trait, a stage out of reach), and
    summarise it. Exit codes: 2 the model does not load, 1 warnings under --strict."""
    from .model import load_model
    from .modelcheck import findings

    model = load_model(path)
    origin = str(path) if path is not None else "default_model.yaml"
    found = findings(model)
    for finding in found:
        click.echo(f"warning: {origin}: {finding}", err=True)
    if strict and found:
        sys.exit(1)
    warned = f" ({len(found)} warning{'s' if len(found) != 1 else ''})" if found else ""
    click.echo(
        f"ok: model {model.version}: {len(model.rules)} engagement rules, {len(model.fit.rules)} fit rules, "
        f"stages {' → '.join(f'{s.name}≥{s.min_score:g}' for s in model.stages)}{warned}"
    )
    for exp in model.experiments:  # one at most (model.py)
        total = sum(a.share for a in exp.arms)
        arms = ", ".join(f"{a.name} {a.share / total:.0%}" + (f" ({', '.join(f'{k}≥{v.min_score:g}' for k, v in a.stages.items() if v.min_score is not None)})" if a.stages else "")
                         for a in exp.arms)
        click.echo(f"experiment {exp.name}: {arms}")
