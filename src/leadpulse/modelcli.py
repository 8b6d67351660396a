"""`leadpulse models | activate | rollback | diff | backtest`: changing the model safely
(docs/scoring.md, Changing the model). Imported only when one of them runs (cli.py)."""

from __future__ import annotations

import asyncio
import getpass
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from .cliopts import fails_cleanly, settings_from, settings_options
from .settings import Settings

T = TypeVar("T")
_FILE = click.Path(path_type=Path, dir_okay=False, exists=True)


def _who() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()} (leadpulse CLI)"


def _with_redis(settings: Settings, work: Callable[[Any, Any], Awaitable[T]]) -> T:
    from .keys import Keys
    from .redisconn import connect

    async def run() -> T:
        redis = connect(settings.redis_url.get_secret_value(), settings.redis_cluster)
        try:
            return await work(redis, Keys(cluster=settings.redis_cluster))
        finally:
            await redis.aclose()

    return asyncio.run(run())


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@settings_options
@fails_cleanly
def models_command(as_json: bool, **options: Any) -> None:
    """Every model version ever active: who activated it, when, and when it was superseded."""
    from . import models

    log = _with_redis(settings_from(options), models.history)
    if as_json:
        click.echo(orjson.dumps([a.as_json() for a in log], option=orjson.OPT_INDENT_2).decode())
        return
    if not log:
        click.echo("no model was ever activated (workers activate their model file when they start)")
        return
    for a in log:
        row = a.as_json()
        until = row["superseded_at"] or "active"
        click.echo(f"#{a.number:<4} {a.version:<24} {row['activated_at']} → {until:<24}  by {a.activated_by}"
                   + (f"  ({a.origin})" if a.origin else ""))


def _report(done: Any) -> None:
    word = "activated" if done.changed else "already active"
    click.echo(f"model {done.version} {word} (activation #{done.activation}); every worker takes it at its next batch")


@click.command()
@click.argument("path", type=_FILE)
@settings_options
@fails_cleanly
def activate(path: Path, **options: Any) -> None:
    """Make the model in PATH the active one on every worker, without a restart."""
    from . import models
    from .bounds import Retention
    from .modelcheck import findings
    from .model import load_model

    settings = settings_from(options)
    for finding in findings(load_model(path)):
        click.echo(f"warning: {path}: {finding}", err=True)
    text, origin = models.model_text(path)
    retention = Retention.from_settings(settings)
    _report(_with_redis(settings, lambda r, k: models.activate(r, k, text, _who(), origin, retention.check)))


@click.command()
@click.argument("version", required=False)
@settings_options
@fails_cleanly
def rollback(version: str | None, **options: Any) -> None:
    """Activate VERSION again (default: the version active before the current one)."""
    from . import models

    _report(_with_redis(settings_from(options), lambda r, k: models.rollback(r, k, version, _who())))


@click.command()
@click.argument("old", type=_FILE)
@click.argument("new", type=_FILE)
@click.option("--json", "as_json", is_flag=True, help="the changes as a JSON list")
@fails_cleanly
def diff(old: Path, new: Path, as_json: bool) -> None:
    """What changed between two models, in words: rules, points, caps, decay, predicates, fit
    rules, grades, stages. Exit code 1 when they differ (like diff(1))."""
    from .model import load_model
    from .modeldiff import changes

    found = changes(load_model(old), load_model(new))
    if as_json:
        click.echo(orjson.dumps([c.as_json() for c in found], option=orjson.OPT_INDENT_2).decode())
    else:
        for change in found:
            click.echo(str(change))
        if not found:
            click.echo("no change")
    sys.exit(1 if found else 0)
