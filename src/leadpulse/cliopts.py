"""What every `leadpulse` command shares: settings as flags, and errors as one line.

Apart from cli.py so that commands living elsewhere (the analysis tools) use the same flags
without importing the command line that registers them.
"""

from __future__ import annotations

import functools
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from pydantic import BeforeValidator, SecretStr

from .errors import ConfigError
from .settings import Settings, load_settings


def _option_type(annotation: Any) -> Any:
    base = annotation
    if typing.get_origin(annotation) is not typing.Literal:  # X | None: the X
        base = next((a for a in typing.get_args(annotation) if a is not type(None)), annotation)
    if typing.get_origin(base) is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(base)])
    return {int: click.INT, float: click.FLOAT, bool: click.BOOL, Path: click.Path(path_type=Path)}.get(
        base, click.STRING
    )


def settings_options(fun: Callable[..., Any]) -> Callable[..., Any]:
    """Every setting as a flag (`--redis-url` for LEADPULSE_REDIS_URL): one model, two doors."""
    for name, field in reversed(Settings.model_fields.items()):
        flag = "--" + name.replace("_", "-")
        # durations ("400d") are parsed by the setting's own validator
        parsed = any(isinstance(m, BeforeValidator) for m in field.metadata)
        fun = click.option(
            flag, name, type=click.STRING if parsed else _option_type(field.annotation), default=None,
            help=f"{field.description} [env LEADPULSE_{name.upper()}]",
        )(fun)
    return fun


def settings_from(options: dict[str, Any]) -> Settings:
    names = set(Settings.model_fields)
    picked = {k: options.pop(k) for k in list(options) if k in names}
    for key, value in picked.items():
        if value is not None and Settings.model_fields[key].annotation in (SecretStr, SecretStr | None):
            picked[key] = SecretStr(value)
    return load_settings(**picked)


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
