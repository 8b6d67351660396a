"""What every stage of a run shares: the services, the options, the progress bars, the processes
to stop at the end, and the bench redis-server's databases (one per stage)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..events import SOURCES
from .children import Child, Worker

if TYPE_CHECKING:
    from ..dev.embedded import Stack

#: database numbers of the stages on the bench's own redis-server
DB_RECORD, DB_REPLAY, DB_BASELINE, DB_LEADPULSE, DB_TWO, DB_LATENCY, DB_MEMORY, DB_RSS, DB_PROCESSES = 1, 2, 3, 4, 5, 6, 7, 8, 9
DB_SHADOW = 10


class Context:
    def __init__(self, *, stack: Stack, events: int, leads: int, seed: int, rate: float, latency_seconds: float,
                 baseline_seconds: float, memory_leads: int, partitions: int, workdir: Path, stages: set[str],
                 progress: Any, batch_max: int | None = None, rss_events: int = 0,
                 rss_max_leads: int = 1_000_000, baseline_runs: int = 3, baseline_variant: bool = True) -> None:
        self.bootstrap = stack.broker.bootstrap
        self.port = stack.redis.port
        self.pids = (stack.redis.proc.pid, stack.broker.proc.pid)  # type: ignore[union-attr]
        self.n_events = events
        self.n_leads = leads
        self.seed = seed
        self.rate = rate
        self.latency_seconds = latency_seconds
        self.baseline_seconds = baseline_seconds
        self.memory_leads = memory_leads
        self.partitions = partitions
        self.workdir = workdir
        self.stages = stages
        self.progress = progress
        self.tag = uuid.uuid4().hex[:8]
        self.prefix = f"bench{self.tag}."
        self.topics = [f"{self.prefix}{s}" for s in SOURCES]
        self.children: list[Child] = []
        self.extra = {"batch_max": batch_max} if batch_max else {}
        self.rss_events, self.rss_max_leads = rss_events, rss_max_leads
        self.baseline_runs, self.baseline_variant = baseline_runs, baseline_variant

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    async def flush(self, *dbs: int) -> None:
        from redis.asyncio import Redis

        for db in dbs:
            client = Redis.from_url(self.url(db))
            await client.flushdb()
            await client.aclose()

    # progress bar helpers
    def task(self, description: str, total: float | None) -> Callable[[int], None]:
        task_id = self.progress.add_task(description, total=total)
        return lambda n: self.progress.advance(task_id, n)

    def finish(self) -> None:
        """Mark every task done (a stage that ended early, one without a known total)."""
        for task in self.progress.tasks:
            if not task.finished:
                self.progress.update(task.id, total=task.completed if task.total is None else task.total,
                                     completed=task.total if task.total is not None else task.completed)

    def worker(self, name: str, redis_url: str, processes: int = 1, **extra: Any) -> Worker:
        """A `leadpulse worker` on the run's topics, with its own group, handoff and DLQ topics."""
        settings = {
            "kafka_bootstrap": self.bootstrap, "redis_url": redis_url, "group_id": f"{self.tag}-{name}",
            "topic_prefix": self.prefix, "handoff_topic": f"{self.prefix}{name}.handoff",
            "dlq_topic": f"{self.prefix}{name}.dlq", "partitions": self.partitions, **self.extra, **extra,
        }
        w = Worker(self.workdir, name, processes, **settings)
        self.children.append(w)
        return w

    def stop_children(self) -> None:
        for child in self.children:
            child.stop()
