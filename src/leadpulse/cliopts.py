"""What every `leadpulse` command shares: settings as flags, `--config` and `--print-config`,
errors as one line, and running a service until it is signalled.

Apart from cli.py so that commands living elsewhere (the collector, alerts, the analysis tools)
use the same flags without importing the command line that registers them.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import sys
import typing
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson
from pydantic import BeforeValidator

from .errors import ConfigError
from .settings import CONFIG_ENV, BaseConfig, Settings, load

S = TypeVar("S", bound=BaseConfig)
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _option_type(annotation: Any) -> Any:
    base = annotation
    if typing.get_origin(annotation) is not typing.Literal:  # unwrap `X | None`, not a Literal's values
        base = next((a for a in typing.get_args(annotation) if a is not type(None)), annotation)
    if typing.get_origin(base) is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(base)])
    return {int: click.INT, float: click.FLOAT, Path: click.Path(path_type=Path)}.get(base, click.STRING)


def options(cls: type[BaseConfig], names: Iterable[str] | None = None) -> Decorator:
    """Each setting of `cls` (or the named ones) as a flag: `--redis-url` for LEADPULSE_REDIS_URL,
    `--x/--no-x` for a yes/no setting. One model, two doors: the flag's help is the field's."""
    chosen = list(cls.model_fields if names is None else names)

    def decorate(fun: Callable[..., Any]) -> Callable[..., Any]:
        for name in reversed(chosen):
            info = cls.model_fields[name]
            flag = "--" + name.replace("_", "-")
            help_text = f"{info.description} [env LEADPULSE_{name.upper()}]"
            if info.annotation in (bool, bool | None):
                fun = click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help_text)(fun)
                continue
            # durations ("400d") and lists are parsed by the setting's own validator
            parsed = any(isinstance(m, BeforeValidator) for m in info.metadata)
            kind = click.STRING if parsed else _option_type(info.annotation)
            fun = click.option(flag, name, type=kind, default=None, help=help_text)(fun)
        return fun

    return decorate


#: every worker setting as a flag (worker, produce, score, top, rescore, report, calibrate)
settings_options = options(Settings)


def config_option(section: str) -> Decorator:
    return click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
                        help=f"YAML config file; its {section}: section is read [env {CONFIG_ENV}]")


print_config_option = click.option("--print-config", is_flag=True,
                                   help="print the settings (secrets masked) and exit")


@typing.overload
def settings_from(options: dict[str, Any]) -> Settings: ...
@typing.overload
def settings_from(options: dict[str, Any], cls: type[S], config: Path | None = None) -> S: ...
def settings_from(options: dict[str, Any], cls: type[BaseConfig] = Settings, config: Path | None = None) -> BaseConfig:
    """The `cls` settings among the command's `options` (taken out of them), then loaded."""
    picked = {k: options.pop(k) for k in list(options) if k in cls.model_fields}
    return load(cls, config, **picked)


def echo_config(*parts: dict[str, Any]) -> None:
    """Masked settings (`BaseConfig.masked()`), merged, as indented JSON."""
    merged: dict[str, Any] = {}
    for part in parts:
        merged.update(part)
    click.echo(orjson.dumps(merged, option=orjson.OPT_INDENT_2).decode())


def fails_cleanly(fun: Callable[..., Any]) -> Callable[..., Any]:
    """Configuration errors are one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(fun)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fun(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"leadpulse: {exc}", err=True)
            sys.exit(2)

    return wrapper


def configure_logging(level: str) -> None:
    from .logs import configure

    configure(level)


async def serve_until_signalled(start: Callable[[], Awaitable[Any]], stop: Callable[[], Awaitable[Any]],
                                failed: asyncio.Event | None = None) -> None:
    """Start, run until SIGINT/SIGTERM (or until `failed` is set), then stop gracefully.
    (The worker's lifecycle is Faust's; the collector and alerts run under this.)"""
    signalled = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signalled.set)
    await start()
    waits = [asyncio.ensure_future(e.wait()) for e in (signalled, failed) if e is not None]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        await stop()
