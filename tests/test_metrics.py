"""The worker's operational metrics, read from a real worker's /metrics: the decay sweep's
health (and the caught-up state that pauses it), and Redis memory against maxmemory."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator

import msgpack
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from leadpulse.dev.embedded import RedisServer, TansuBroker
from leadpulse.keys import Keys
from leadpulse.metrics import SWEEP_GRACE_INTERVALS

from tests.support.kafkatools import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SWEEP_INTERVAL = 0.5

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this module's own: its tests poison the due index and change maxmemory."""
    server = RedisServer(tmp_path_factory.mktemp("redis-metrics"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def worker(broker: TansuBroker, own_redis: RedisServer,
                 tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[WorkerProcess]:
    workdir = tmp_path_factory.mktemp("worker-metrics")
    with contextlib.chdir(workdir):  # Faust writes its <group>-data directory where it starts
        proc = WorkerProcess(broker.bootstrap, own_redis.url, workdir, sweep_interval=SWEEP_INTERVAL).start()
    try:
        await proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture
async def redis(own_redis: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(own_redis.url)
    yield client
    await client.aclose()


async def scrape(worker: WorkerProcess) -> Samples:
    status, text = await worker.get("/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def scrape_until(worker: WorkerProcess, holds: Callable[[Samples], bool], what: str,
                       timeout: float = 60.0) -> Samples:
    """Scrape until `holds`; the deadline is generous, not a claim about timing."""
    deadline = time.monotonic() + timeout
    while True:
        samples = await scrape(worker)
        if holds(samples):
            return samples
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f} s"
        await asyncio.sleep(0.2)


SUCCESS = "leadpulse_sweep_last_success_timestamp_seconds"
OVERDUE = "leadpulse_sweep_overdue_entries"
LAG = "leadpulse_sweep_lag_seconds"


def sweep_errors(s: Samples) -> float:
    return value(s, "leadpulse_redis_errors_total", op="sweep")


def skipped(s: Samples) -> float:
    return value(s, "leadpulse_sweep_skipped_leads_total", reason="script_error")


async def test_the_sweep_reports_each_pass_and_a_due_entry_it_skips(worker: WorkerProcess, redis: Redis) -> None:
    started = time.time()
    s = await scrape_until(worker, lambda s: value(s, SUCCESS) > 0 and value(s, "leadpulse_caught_up") == 1,
                           "a caught-up worker completing a sweep pass")
    assert value(s, "leadpulse_sweep_interval_seconds") == SWEEP_INTERVAL
    assert value(s, OVERDUE) == 0 and value(s, LAG) == 0  # nothing is due in an empty Redis

    # A lead whose state the sweep cannot read (Lua: unknown format), due a minute ago: every
    # pass reads it and skips it (counted), the passes complete, and the entry stays overdue.
    assert SWEEP_GRACE_INTERVALS * SWEEP_INTERVAL < 60
    keys = Keys()
    poisoned = keys.lead("poisoned")
    await redis.set(poisoned.state, msgpack.packb([99]))
    await redis.zadd(keys.due, {"poisoned": int(time.time() * 1000) - 60_000})
    before, errors = skipped(s), sweep_errors(s)
    s = await scrape_until(worker, lambda s: skipped(s) >= before + 2, "two sweep passes skipping the lead")
    since = value(s, SUCCESS)
    assert since >= started
    s = await scrape_until(worker, lambda s: skipped(s) >= before + 4 and value(s, SUCCESS) > since,
                           "two more passes skipping it, completed")
    assert sweep_errors(s) == errors  # the passes did not fail: only the lead was skipped
    assert value(s, OVERDUE) == 1  # due 60 s ago: past the grace
    assert value(s, LAG) >= 60
    assert value(s, "leadpulse_caught_up") == 1
    stuck_since = value(s, SUCCESS)

    # Without the unreadable state the next pass clears the entry and completes.
    await redis.delete(poisoned.state)
    s = await scrape_until(worker, lambda s: value(s, SUCCESS) > stuck_since and value(s, OVERDUE) == 0,
                           "a completed pass that leaves nothing overdue")
    assert value(s, LAG) == 0
    assert await redis.zscore(keys.due, "poisoned") is None


async def test_redis_memory_is_sampled_against_maxmemory(worker: WorkerProcess, own_redis: RedisServer,
                                                         redis: Redis) -> None:
    node = f"127.0.0.1:{own_redis.port}"
    limit = int((await redis.config_get("maxmemory"))["maxmemory"])
    used = "leadpulse_redis_used_memory_bytes"
    s = await scrape_until(worker, lambda s: value(s, used, node=node) > 0, "Redis memory sampled")
    assert value(s, "leadpulse_redis_maxmemory_bytes", node=node) == limit
    assert [k for k in s if k[0] == used] == [(used, (("node", node),))]  # one Redis: one node

    raised = limit + 512 * 1024 * 1024
    await redis.config_set("maxmemory", raised)
    try:
        await scrape_until(worker, lambda s: value(s, "leadpulse_redis_maxmemory_bytes", node=node) == raised,
                           "the new maxmemory sampled")
    finally:
        await redis.config_set("maxmemory", limit)
