"""The `leadpulse bench` command: options, the services, the progress bars and the output."""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import click
import orjson

from .context import Context
from .measure import loadavg, machine
from .report import Report, render
from .runner import run

STAGES = ("ceilings", "baseline", "leadpulse", "shadow", "processes", "memory", "rebalance", "latency", "rss")


@click.command()
@click.option("--events", default=300_000, show_default=True, help="events in the set (the first ones, in time order)")
@click.option("--leads", default=100_000, show_default=True, help="leads whose journeys make the event set")
@click.option("--seed", default=7, show_default=True, help="random seed of the journeys")
@click.option("--rate", default=5000.0, show_default=True, help="offered events/s for the latency measurement")
@click.option("--latency-seconds", default=20.0, show_default=True, help="how long to offer that load")
@click.option("--baseline-seconds", default=30.0, show_default=True, help="time box of the naive baseline")
@click.option("--baseline-runs", default=3, show_default=True, help="runs of the naive baseline (its row is the median)")
@click.option("--baseline-variant/--no-baseline-variant", default=True, show_default=True,
              help="also run the earlier baseline variant (stream.events(), log WARNING) as a second row")
@click.option("--memory-leads", default=1_000_000, show_default=True, help="leads to measure Redis memory at")
@click.option("--partitions", default=8, show_default=True, help="partitions per input topic")
@click.option("--batch-max", type=int, default=None, help="LEADPULSE_BATCH_MAX of the LeadPulse workers (default: theirs)")
@click.option("--skip", multiple=True, type=click.Choice(STAGES), help="leave a stage out (repeatable)")
@click.option("--rss-events", default=0, show_default=True,
              help="stage rss, off at 0: stream this many events through a worker while producing them "
                   "(a tenth of them, ≤ 1 M, ahead) and sample its RSS at every 10 %; 10000000 is the issue #4 goal (long)")
@click.option("--rss-max-leads", default=1_000_000, show_default=True,
              help="distinct leads the rss stage makes before it recycles lead ids (~20 events a lead)")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="keep logs and data here")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
def bench(events: int, leads: int, seed: int, rate: float, latency_seconds: float, baseline_seconds: float,
          baseline_runs: int, baseline_variant: bool, memory_leads: int, partitions: int, batch_max: int | None, rss_events: int, rss_max_leads: int,
          skip: tuple[str, ...], data_dir: Path | None,
          as_json: bool) -> None:
    """Throughput, latency and memory: LeadPulse beside a naive Faust worker and the ceilings."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..dev.embedded import Stack

    args = sys.argv[1:]
    if args[:1] == ["bench"]:  # run as `leadpulse bench`, not as a module
        args = args[1:]
    command = " ".join(["leadpulse bench", *args])
    report = Report(machine=machine(), command=command.strip(), load_before=loadavg())
    started = time.perf_counter()
    tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="leadpulse-bench-")
    workdir = Path(data_dir or tmp.name)  # type: ignore[union-attr]
    workdir.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    progress = Progress(TextColumn("{task.description:<44}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=as_json)
    try:
        with Stack(workdir / "services") as stack, progress:
            ctx = Context(stack=stack, events=events, leads=leads, seed=seed, rate=rate, latency_seconds=latency_seconds,
                          baseline_seconds=baseline_seconds, memory_leads=memory_leads, partitions=partitions,
                          workdir=workdir, stages=set(STAGES) - set(skip), progress=progress, batch_max=batch_max,
                          rss_events=rss_events, rss_max_leads=rss_max_leads, baseline_runs=baseline_runs,
                          baseline_variant=baseline_variant)
            try:
                asyncio.run(run(ctx, report))
            finally:
                ctx.stop_children()
    finally:
        if tmp is not None:
            tmp.cleanup()
    report.load_after = loadavg()
    report.seconds = time.perf_counter() - started
    if as_json:
        click.echo(orjson.dumps({**report.as_dict(), "table": render(report)}, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(render(report))
