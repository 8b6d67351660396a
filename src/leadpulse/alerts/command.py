"""`leadpulse alerts`: its command line."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click

from ..cliopts import (
    config_option,
    configure_logging,
    echo_config,
    fails_cleanly,
    options,
    print_config_option,
    serve_until_signalled,
    settings_from,
)
from ..settings import Settings
from .config import KAFKA_FIELDS, AlertSettings, load_alert_settings


def run_alerts(settings: Settings, config: AlertSettings) -> None:
    from .service import AlertService  # aiohttp and aiokafka: loaded to run, not for `leadpulse --help`

    service = AlertService(settings, config)
    asyncio.run(serve_until_signalled(service.start, service.stop, service.crashed))
    if service.crashed.is_set():
        sys.exit(1)  # let the supervisor restart us rather than serve metrics without consuming


@click.command()
@options(Settings, KAFKA_FIELDS)
@options(AlertSettings)
@config_option("alerts")
@print_config_option
@fails_cleanly
def alerts(config_file: Path | None, print_config: bool, **flags: Any) -> None:
    """Announce handoffs from leads.handoff in Slack and on a signed JSON webhook."""
    settings = settings_from(flags)
    config = load_alert_settings(config_file, **flags)  # what settings_from left: alerts' own
    if print_config:
        echo_config({k: v for k, v in settings.masked().items() if k in KAFKA_FIELDS}, config.masked())
        return
    configure_logging(settings.log_level)
    run_alerts(settings, config)
