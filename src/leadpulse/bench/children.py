"""The processes a stage measures: a child with its log in the scratch directory, `leadpulse
worker` configured as in production and read through its HTTP port, and `follow`, which polls
one until it is done (for the progress bar, the time box and RSS along the way)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ..dev.embedded import free_port
from .measure import Work, memory


class Child:
    """A child process with its log in the bench's scratch directory."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            # In the scratch directory: Faust writes its `<app id>-data` folder into the cwd.
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=log.parent)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-n:]
        return ""

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADPULSE_")}
    env.update(extra)
    return env


class Worker(Child):
    """`leadpulse worker` configured by LEADPULSE_* variables, as in production."""

    def __init__(self, workdir: Path, name: str, processes: int = 1, **settings: Any) -> None:
        self.port = free_port()
        #: one HTTP port per worker process (`--processes N`: process i on port + i)
        self.ports = [self.port + i for i in range(processes)]
        self.settings = {"http_port": self.port, "log_level": "info", **settings}
        env = child_env({f"LEADPULSE_{k.upper()}": str(v) for k, v in self.settings.items()})
        argv = [sys.executable, "-m", "leadpulse", "worker"] + (["--processes", str(processes)] if processes > 1 else [])
        super().__init__(argv, env, workdir / f"{name}.log")

    async def get(self, path: str, port: int | None = None) -> tuple[int, str]:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port or self.port), 5)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body.decode(errors="replace")

    async def ready(self) -> bool:
        """Every worker process answers /readyz with 200."""
        for port in self.ports:
            status = 0
            with contextlib.suppress(OSError, asyncio.TimeoutError, IndexError, ValueError):
                status, _ = await self.get("/readyz", port)
            if status != 200:
                return False
        return True

    async def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise click.ClickException(f"the worker exited:\n{self.tail()}")
            if await self.ready():
                return
            await asyncio.sleep(0.2)
        raise click.ClickException(f"the worker was not ready within {timeout:.0f} s:\n{self.tail()}")

    async def metrics(self) -> list[Any] | None:
        """The samples of its /metrics (prometheus_client's parser), every process's together, or
        None if one did not answer."""
        samples = await self.metrics_each()
        return None if samples is None else [s for each in samples for s in each]

    async def metrics_each(self) -> list[list[Any]] | None:
        """The samples of each worker process's /metrics, or None if one did not answer."""
        from prometheus_client.parser import text_string_to_metric_families

        out = []
        for port in self.ports:
            text = None
            with contextlib.suppress(OSError, asyncio.TimeoutError, IndexError, ValueError):
                status, body = await self.get("/metrics", port)
                text = body if status == 200 else None
            if text is None:
                return None
            out.append([s for family in text_string_to_metric_families(text) for s in family.samples])
        return out

    async def counts(self) -> tuple[int, int]:
        """(events finished, every outcome; handoffs published), or (-1, -1) if /metrics did not answer."""
        samples = await self.metrics()
        if samples is None:
            return -1, -1
        return (int(sum(s.value for s in samples if s.name == "leadpulse_events_total")),
                int(sum(s.value for s in samples if s.name == "leadpulse_handoffs_total")))

    async def processed(self) -> int:
        """Events the worker has finished (every outcome), from its /metrics."""
        return (await self.counts())[0]

    async def work(self, timeout: float = 90.0) -> Work:
        """The worker's own account of its work (leadpulse_work_seconds, leadpulse_events_total),
        read in one scrape, so the count and the span's end belong to the same batch."""
        deadline = time.monotonic() + timeout
        while (each := await self.metrics_each()) is None:
            if time.monotonic() > deadline or not self.alive():
                raise click.ClickException(f"{self.log.name}: /metrics did not answer:\n{self.tail()}")
            await asyncio.sleep(0.2)
        works = [_work(samples) for samples in each]
        if len(works) == 1:
            return works[0]
        # several processes: their events and CPU added, the span from the first start to the last end
        busy = [w for w in works if w.events]
        return Work(sum(w.events for w in works), min((w.start for w in busy), default=0.0),
                    max((w.end for w in busy), default=0.0), 0.0, sum(w.cpu for w in busy))

    def assignments(self) -> list[int]:
        """The partition counts this worker was assigned, in order (from its info log)."""
        with contextlib.suppress(OSError):
            return [int(n) for n in re.findall(r"assigned (\d+) partitions", self.log.read_text(errors="replace"))]
        return []


def _work(samples: list[Any]) -> Work:
    """One worker process's account of its work, from one scrape."""
    marks = {(s.labels["at"], s.labels["clock"]): s.value for s in samples if s.name == "leadpulse_work_seconds"}
    return Work(int(sum(s.value for s in samples if s.name == "leadpulse_events_total")),
                marks.get(("start", "unix"), 0.0), marks.get(("end", "unix"), 0.0),
                marks.get(("start", "cpu"), 0.0), marks.get(("end", "cpu"), 0.0))


@dataclass
class Sample:
    t: float
    count: int
    rss: int


async def follow(
    child: Child, count: Callable[[], Awaitable[int]], target: int, *,
    on_progress: Callable[[int], None], time_box: float | None = None, interval: float = 1.0,
) -> list[Sample]:
    """Poll a process until `target` events are done or the time box runs out: for the progress
    bar, the time box and RSS along the way. The rates come from the process (`Work`)."""
    samples: list[Sample] = []
    shown = 0
    first_t: float | None = None
    while True:
        if not child.alive():
            raise click.ClickException(f"{child.log.name}: the process exited:\n{child.tail()}")
        n = await count()
        t = time.perf_counter()
        rss, _ = memory(child.pid)
        samples.append(Sample(t, n, rss))
        if n > shown:
            on_progress(n - shown)
            shown = n
        if n > 0 and first_t is None:
            first_t = t
        if n >= target:
            return samples
        if time_box is not None and first_t is not None and t - first_t > time_box:
            return samples
        await asyncio.sleep(interval)
