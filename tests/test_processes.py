"""`leadpulse worker --processes N`: N worker processes in one group, signals forwarded, a crashed
child restarted, a crash loop stops everything with a failure status. Real broker, real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from leadpulse.dev.embedded import RedisServer, TansuBroker
from leadpulse.processes import Supervisor, child_settings
from leadpulse.settings import Settings
from tests.support.kafkatools import WorkerProcess, event_bytes, produce, wait_for
from tests.support.ports import free_port_and

integration = pytest.mark.integration


def _exit_at_once(settings: Settings, index: int) -> None:  # the child of the crash-loop test
    sys.exit(3)


def test_each_child_serves_http_on_its_own_port() -> None:
    settings = Settings(http_port=7000)
    assert [child_settings(settings, i).http_port for i in range(3)] == [7000, 7001, 7002]
    assert child_settings(settings, 2).group_id == settings.group_id
    with pytest.raises(ValueError, match="port"):
        Supervisor(Settings(http_port=65535), 2)


def test_ports_past_the_last_one_are_a_one_line_configuration_error() -> None:
    done = subprocess.run([sys.executable, "-m", "leadpulse", "worker", "--processes", "3", "--http-port", "65534"],
                          capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == ["leadpulse: --processes: child 2 would listen on port 65536"]


def test_a_crash_loop_stops_the_supervisor_with_a_failure_status() -> None:
    supervisor = Supervisor(Settings(), 2, target=_exit_at_once, backoff=(0.01, 0.05), crash_limit=4,
                            crash_window=60.0)
    assert supervisor.run() == 1
    assert supervisor.failed and len(supervisor.exits) == 5
    assert supervisor.alive() == []


async def _metric(w: WorkerProcess, port: int, name: str) -> float:
    w.port = port
    with contextlib.suppress(Exception):
        status, text = await w.get("/metrics")
        if status == 200:
            return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")
                       or line.startswith(name + " "))
    return -1.0


def _children(pid: int) -> list[int]:
    """The worker processes under the supervisor `pid` (not multiprocessing's resource tracker)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    found = []
    for child in (int(p) for p in out.split()):
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
    return sorted(found)


@integration
@pytest.mark.slow  # ≥ 5 s (README, Tests)
async def test_two_processes_share_the_group_survive_a_crash_and_stop_on_sigterm(
    broker: TansuBroker, redis_server: RedisServer, redis: Redis, tmp_path: Path
) -> None:
    w = WorkerProcess(broker.bootstrap, redis_server.url, tmp_path, partitions=4)
    # The supervisor gives process i the port base + i: both must be free, not only the first.
    base = w.port = w.settings["http_port"] = free_port_and(1)
    ports = [base, base + 1]
    with w.log.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "leadpulse", "worker", "--processes", "2"], env=w.env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        async def ready(port: int) -> bool:
            w.port = port
            with contextlib.suppress(Exception):
                status, _ = await w.get("/readyz")
                return status == 200
            return False

        async def both_ready() -> bool:
            assert proc.poll() is None, w.log.read_text()[-3000:]
            return all([await ready(p) for p in ports])

        await wait_for(both_ready, 120, "both worker processes ready")
        # the partitions are split between the two members of the one group
        async def split() -> bool:
            counts = []
            for p in ports:
                w.port = p
                _, body = await w.get("/readyz")
                counts.append(body["partitions_assigned"])
            return all(n > 0 for n in counts)

        await wait_for(split, 120, "partitions assigned to both worker processes")

        events: list[tuple[str, bytes | None, bytes]] = []
        now = int(time.time() * 1000)
        for i in range(200):
            lead = f"lead-{i % 40}"
            events.append((w.topic("web"), lead.encode(), event_bytes(
                event_id=f"e-{i}", lead_id=lead, source="web", type="page_view", occurred_at=now,
                properties={"url": "https://acme.io/pricing"})))
        await produce(broker.bootstrap, events)

        async def all_done() -> bool:
            return sum([max(0.0, await _metric(w, p, "leadpulse_events_total")) for p in ports]) >= 200

        await wait_for(all_done, 120, "200 events handled by the two processes together")

        # a child killed outright is restarted, and serves its port again
        before = _children(proc.pid)
        assert len(before) == 2, before
        os.kill(before[0], signal.SIGKILL)

        async def replaced() -> bool:
            now = _children(proc.pid)
            return len(now) == 2 and before[0] not in now and await both_ready()

        await wait_for(replaced, 120, "the killed worker process restarted and ready")
        assert "restarting it" in w.log.read_text()

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 60) == 0
        assert _children(proc.pid) == []
        assert "every worker process stopped" in w.log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _children(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


