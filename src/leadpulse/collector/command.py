"""`leadpulse collector`: its command line."""

from __future__ import annotations

import asyncio
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
from .config import KAFKA_FIELDS, CollectorSettings, load_collector_settings


def run_collector(settings: Settings, config: CollectorSettings) -> None:
    from .app import Collector  # aiohttp and aiokafka: loaded to run, not for `leadpulse --help`

    collector = Collector(settings, config)
    asyncio.run(serve_until_signalled(collector.start, collector.stop))


@click.command()
@options(Settings, KAFKA_FIELDS)
@options(CollectorSettings)
@config_option("collector")
@print_config_option
@fails_cleanly
def collector(config_file: Path | None, print_config: bool, **flags: Any) -> None:
    """Accept the Segment Tracking API over HTTP and produce LeadPulse events to Kafka."""
    settings = settings_from(flags)
    config = load_collector_settings(config_file, **flags)  # what settings_from left: the collector's own
    if print_config:
        echo_config({k: v for k, v in settings.masked().items() if k in KAFKA_FIELDS}, config.masked())
        return
    configure_logging(settings.log_level)
    run_collector(settings, config)

