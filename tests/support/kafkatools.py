"""Test helpers around a real broker and a real worker process (no mocks)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from redis.asyncio import Redis

from leadpulse.dev.embedded import free_port


class WorkerProcess:
    """`leadpulse worker` as a child process, configured by LEADPULSE_* variables."""

    def __init__(self, bootstrap: str, redis_url: str, log_dir: Path, **settings: Any) -> None:
        tag = uuid.uuid4().hex[:8]
        self.tag = tag
        self.port = free_port()
        self.settings = {
            "kafka_bootstrap": bootstrap,
            "redis_url": redis_url,
            "http_port": self.port,
            "group_id": f"g-{tag}",
            "topic_prefix": f"t{tag}.",
            "handoff_topic": f"t{tag}.handoff",
            "dlq_topic": f"t{tag}.dlq",
            "outcomes_topic": f"t{tag}.outcomes",
            "partitions": 4,
            "sweep_interval": 1.0,
            **settings,
        }
        self.log = log_dir / f"worker-{tag}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def successor(self) -> WorkerProcess:
        """A worker like this one (same group, topics, Redis) on a port of its own, not started."""
        nxt = WorkerProcess.__new__(WorkerProcess)
        nxt.tag, nxt.port, nxt.proc = self.tag, free_port(), None
        nxt.settings = dict(self.settings, http_port=nxt.port)
        nxt.log = self.log.with_name(f"worker-{self.tag}-{nxt.port}.log")
        return nxt

    def kill_and_restart(self) -> WorkerProcess:
        """kill -9, then start a successor: what a crash under a supervisor looks like."""
        self.signal(signal.SIGKILL)
        self.wait(10)
        return self.successor().start()

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEADPULSE_")}
        env.update({f"LEADPULSE_{k.upper()}": str(v) for k, v in self.settings.items()})
        return env

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def topic(self, source: str) -> str:
        return f"{self.settings['topic_prefix']}{source}"

    def start(self) -> WorkerProcess:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "leadpulse", "worker"], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
                try:
                    async with http.get(self.url + "/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        raise AssertionError(f"worker not ready within {timeout} s:\n{self.log.read_text()[-3000:]}")

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http, http.get(self.url + path, **kwargs) as resp:
            body = await resp.read()
            is_json = resp.content_type == "application/json"
            return resp.status, orjson.loads(body) if is_json else body.decode()


@contextlib.asynccontextmanager
async def running(worker: WorkerProcess) -> AsyncIterator[WorkerProcess]:
    """Start a worker, wait until it is ready, stop it afterwards."""
    worker.start()
    try:
        await worker.wait_ready()
        yield worker
    finally:
        worker.stop()


async def emptied(redis_url: str) -> str:
    """`redis_url` with its database flushed: the session's Redis holds other modules' leads
    (their workers are gone by now), and a module worker's reads (the top leads, the SLA
    report) must be of its own. Returns the URL, for the worker."""
    client = Redis.from_url(redis_url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()
    return redis_url


async def produce(bootstrap: str, items: list[tuple[str, bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for topic, key, value in items]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def consume_until(bootstrap: str, topic: str, done: Any, timeout: float = 60.0) -> list[Any]:
    """Records of `topic` from the beginning until `done(records)` holds (or the deadline)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while not done(records) and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=300)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def read_all(bootstrap: str, topic: str, timeout: float = 60.0) -> list[Any]:
    """Every record of `topic` up to its end as of now: for when nothing more is coming (the
    writer has committed past everything), so a slow read cannot stop short of the end."""
    from leadpulse.kafka import high_watermarks, partitions

    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await probe.start()
    try:
        ends = await high_watermarks(probe, await partitions(probe, [topic]))
    finally:
        await probe.stop()
    total = sum(ends.values())
    records = await consume_until(bootstrap, topic, lambda rs: len(rs) >= total, timeout)
    assert len(records) >= total, f"read {len(records)} of the {total} records of {topic} within {timeout} s"
    return records


def event_bytes(**fields: Any) -> bytes:
    return orjson.dumps(fields)


async def committed_offsets(bootstrap: str, group: str, topics: list[str]) -> dict[Any, int]:
    from leadpulse.kafka import partitions

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {tp: (await consumer.committed(tp) or 0) for tp in await partitions(consumer, topics)}
    finally:
        await consumer.stop()


async def committed_all(bootstrap: str, group: str, topics: list[str]) -> bool:
    """True when the group's committed offsets reach the end of every partition of `topics`."""
    from leadpulse.kafka import high_watermarks, partitions

    committed = await committed_offsets(bootstrap, group, topics)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await high_watermarks(consumer, await partitions(consumer, topics))
        return all(committed.get(tp, 0) >= end for tp, end in ends.items())
    finally:
        await consumer.stop()


async def wait_for(condition: Any, timeout: float, what: str, interval: float = 0.5) -> None:
    """Poll an async condition: a generous deadline for behaviour, never a timing assertion."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")
