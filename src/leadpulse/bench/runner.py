"""`leadpulse bench`: throughput, latency and memory of the real worker, side by side with a naive
Faust worker and with the two ceilings no worker can beat on this machine.

One invocation starts its own broker (Tansu) and redis-server, produces one event set (synthetic
journeys of `--leads` leads: a realistic mix of sources and Zipf-like activity; the first
`--events` of them in time order), and measures, each stage alone on the machine:

1. ceiling, broker read path: raw aiokafka `getmany()` over the event set, no processing;
2. ceiling, Redis write path: the score updates of the event set through the project's batched
   Lua path (recorded from LeadStore once, then replayed as fast as Redis takes them), no Kafka;
3. baseline: a naive Faust agent (`async for event in stream`, one LeadStore call, so one Redis
   round trip, per event) with the same scoring rules;
4. LeadPulse: `leadpulse worker` end to end (consume → validate → score → Redis → handoffs → commit).

Then: latency from `occurred_at` to the handoff record at a fixed offered load, the worker's
peak RSS, Redis bytes per lead (state, indexes and the dedup window apart, measured at
`--memory-leads` leads by copying the measured leads), and two workers in one group with a
rebalance mid-run (their final scores must equal the one-worker run's).

Rows 3 and 4 are measured from each process's own account of its work (`Work`: events handled,
wall clock and CPU time at its first batch received and its last one finished; the worker's
`leadpulse_work_seconds`), not from polling it: polls only drive the progress bars and decide
when a stage is done, so a run shorter than a poll interval measures what it did. Redis's and
the broker's CPU over that span come from a `CpuTrace`; rows 1 and 2 time themselves in-process.

Every process it starts is stopped on exit; ports are free loopback ports; data is scratch.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
import orjson

BASELINE = "baseline: naive Faust agent"
LEADPULSE = "LeadPulse worker"
#: database numbers of the stages on the bench's own redis-server
DB_RECORD, DB_REPLAY, DB_BASELINE, DB_LEADPULSE, DB_TWO, DB_LATENCY, DB_MEMORY = 1, 2, 3, 4, 5, 6, 7
SOURCES = ("web", "email", "webinar", "profile", "crm")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
BATCH = 2000  # the worker's default LEADPULSE_BATCH_MAX


# --- processes: CPU and memory from /proc --------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads, ended ones too) so far: read from its
    CPU-time clock (what clock_getcpuclockid(3) names), to the nanosecond, so that a smoke run's
    few milliseconds of broker or Redis CPU are measured; /proc's 10 ms clock ticks otherwise."""
    with contextlib.suppress(OSError, OverflowError):
        return time.clock_gettime(((~pid) << 3) | 2)  # Linux: MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory(pid: int) -> tuple[int, int]:
    """(RSS, peak RSS) of a process in bytes."""
    rss = peak = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    return rss, peak


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "nproc": os.cpu_count(), "cpu": model, "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(), "kernel": platform.release(),
    }


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


@dataclass
class Work:
    """A process's own account of its work: the events it handled, and its wall clock (Unix time)
    and CPU seconds when it received the first of them and when it finished the last.

    Rows are measured from this, not from samples taken from outside: a run shorter than any
    poll interval still has its span, and the CPU of the span is the work's alone (not start-up,
    not idle time before or after). The span opens before the first event is handled, so one
    batch of N events measures N events, not N − 1."""

    events: int = 0
    start: float = 0.0
    end: float = 0.0
    cpu_start: float = 0.0
    cpu_end: float = 0.0

    @property
    def seconds(self) -> float:
        return self.end - self.start if self.events and self.end > self.start else 0.0

    @property
    def cpu(self) -> float:
        return max(0.0, self.cpu_end - self.cpu_start) if self.events else 0.0


class CpuTrace:
    """The CPU seconds of other processes (Redis, the broker), sampled on the wall clock every
    `interval` by a thread, so that their CPU over a span a process reports itself (`Work`) can
    be read afterwards, however short the span: between the last sample before it and the first
    after. That never misses work done in the span and adds at most an interval of each one's
    idle CPU at either end (interpolating would hide part of a burst shorter than an interval)."""

    def __init__(self, pids: Sequence[int], interval: float = 0.05) -> None:
        self.pids = tuple(pids)
        self.interval = interval
        self.times: list[float] = []
        self.cpus: list[tuple[float, ...]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-trace", daemon=True)

    def _sample(self) -> None:
        self.times.append(time.time())
        self.cpus.append(tuple(cpu_seconds(pid) for pid in self.pids))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> CpuTrace:
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        """The last sample, after the span's end; safe to call again."""
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
            self._sample()

    def __enter__(self) -> CpuTrace:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def between(self, start: float, end: float) -> tuple[float, ...]:
        i = max(0, bisect.bisect_right(self.times, start) - 1)
        j = min(len(self.times) - 1, bisect.bisect_left(self.times, end))
        return tuple(max(0.0, b - a) for a, b in zip(self.cpus[i], self.cpus[j]))


# --- results -------------------------------------------------------------------------------------


@dataclass
class Throughput:
    name: str
    events: int = 0
    seconds: float = 0.0
    cpu: float = 0.0  # CPU seconds of the process under test
    redis_cpu: float = 0.0
    broker_cpu: float = 0.0
    complete: bool = True  # False: stopped by its time box
    note: str = ""

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def per_million(self, cpu: float) -> float:
        return cpu / self.events * 1e6 if self.events else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self), "events_per_s": round(self.rate, 1),
            "cpu_s_per_million": round(self.per_million(self.cpu), 2),
            "redis_cpu_s_per_million": round(self.per_million(self.redis_cpu), 2),
            "broker_cpu_s_per_million": round(self.per_million(self.broker_cpu), 2),
        }


@dataclass
class Report:
    machine: dict[str, Any]
    command: str
    events: int = 0
    leads: int = 0
    journeys: int = 0
    load_before: float = 0.0
    load_after: float = 0.0
    produce: dict[str, Any] = field(default_factory=dict)
    rows: list[Throughput] = field(default_factory=list)
    latency: dict[str, Any] = field(default_factory=dict)
    worker_memory: dict[str, Any] = field(default_factory=dict)
    redis_memory: dict[str, Any] = field(default_factory=dict)
    two_workers: dict[str, Any] = field(default_factory=dict)
    rss_soak: dict[str, Any] = field(default_factory=dict)  # stage "rss", rss.py
    checks: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def row(self, name: str) -> Throughput | None:
        return next((r for r in self.rows if r.name == name), None)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        baseline = self.row(BASELINE)
        out["rows"] = []
        for r in self.rows:
            d = r.as_dict()
            d["ratio_to_baseline"] = round(r.rate / baseline.rate, 2) if baseline and baseline.rate else None
            out["rows"].append(d)
        return out


# --- the event set ---------------------------------------------------------------------------------


def event_set(n_events: int, n_leads: int, seed: int, start_ms: int, prefix: str = "lead") -> list[dict[str, Any]]:
    """The first `n_events` (in time order) of the journeys of `n_leads` leads.

    A visitor's anonymous page views are sent under its lead's id (the identify still carries
    the cookie, so linking runs). Merging an anonymous log is sensitive to the order the
    visitor's and the lead's partitions are read in (window caps depend on the order awards
    are made in), so with anonymous ids two correct runs could end with different scores, and
    the bench compares final scores between runs.
    """
    from ..dev.simulate import journeys

    out: list[dict[str, Any]] = []
    for event in journeys(n_leads, seed=seed, start_ms=start_ms, prefix=prefix):
        if "lead_id" not in event:
            event["lead_id"] = event.pop("anonymous_id").removeprefix("anon-")
        out.append(event)
        if len(out) >= n_events:
            break
    return out


def lead_ids(events: Sequence[dict[str, Any]]) -> list[str]:
    return sorted({e["lead_id"] for e in events if e.get("lead_id")})


# --- Kafka helpers ---------------------------------------------------------------------------------


def _settings(**overrides: Any) -> Any:
    from ..settings import load_settings

    return load_settings(**overrides)


async def produce(bootstrap: str, prefix: str, events: Sequence[dict[str, Any]], on_sent: Callable[[int], None]) -> float:
    from aiokafka import AIOKafkaProducer

    from ..dev.produce import send_all

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=512 * 1024)
    await producer.start()
    try:
        started = time.perf_counter()
        await send_all(producer, ((e, orjson.dumps(e)) for e in events), prefix, on_sent)
        return time.perf_counter() - started
    finally:
        await producer.stop()


async def create_topics(bootstrap: str, names: Sequence[str], partitions: int) -> None:
    from .. import kafka

    await kafka.ensure_topics(_settings(kafka_bootstrap=bootstrap, partitions=partitions), names)


async def ceiling_consume(bootstrap: str, topics: Sequence[str], total: int, broker_pid: int,
                          on_progress: Callable[[int], None]) -> Throughput:
    """Raw aiokafka getmany() over every input partition: the most a worker can read."""
    from aiokafka import AIOKafkaConsumer

    from ..kafka import partitions

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    try:
        tps = await partitions(consumer, topics)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        n = 0
        cpu0, broker0, t0 = time.process_time(), cpu_seconds(broker_pid), time.perf_counter()
        while n < total:
            batch = await consumer.getmany(timeout_ms=500, max_records=BATCH)
            got = sum(len(records) for records in batch.values())
            n += got
            if got:
                on_progress(got)
            if time.perf_counter() - t0 > 600:
                break
        return Throughput(
            "ceiling: broker read (aiokafka getmany)", n, time.perf_counter() - t0,
            cpu=time.process_time() - cpu0, broker_cpu=cpu_seconds(broker_pid) - broker0,
            note="bench process CPU",
        )
    finally:
        await consumer.stop()


async def committed_all(bootstrap: str, group: str, topics: Sequence[str], ends: dict[Any, int]) -> bool:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        for tp, end in ends.items():
            if (await consumer.committed(tp) or 0) < end:
                return False
        return True
    finally:
        await consumer.stop()


async def end_offsets(bootstrap: str, topics: Sequence[str]) -> dict[Any, int]:
    from aiokafka import AIOKafkaConsumer

    from ..kafka import high_watermarks, partitions

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        return await high_watermarks(consumer, await partitions(consumer, topics))
    finally:
        await consumer.stop()


# --- Redis: the Lua path ceiling (record once, replay at full speed) -----------------------------


def _resp(parts: Sequence[Any]) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        b = p if isinstance(p, bytes) else str(p).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def worker_batches(events: Sequence[dict[str, Any]], partitions: int) -> list[list[tuple[str, bytes]]]:
    """The event set cut as a worker's getmany() hands it over: each batch holds up to BATCH
    consecutive records of one partition (a fetch brings a partition's backlog in one piece),
    partitions taking turns. Records are (position, value)."""
    from aiokafka.partitioner import DefaultPartitioner

    from ..dev.simulate import key_for, topic_for

    partitioner = DefaultPartitioner()
    everyone = list(range(partitions))
    logs: dict[tuple[str, int], list[tuple[str, bytes]]] = {}
    for e in events:
        topic = topic_for(e)
        log = logs.setdefault((topic, partitioner(key_for(e), everyone, everyone)), [])
        log.append((f"{topic}:{len(log)}", orjson.dumps(e)))
    queues = [[log[i : i + BATCH] for i in range(0, len(log), BATCH)] for log in logs.values()]
    out: list[list[tuple[str, bytes]]] = []
    for turn in range(max((len(q) for q in queues), default=0)):
        out.extend(q[turn] for q in queues if turn < len(q))
    return out


async def record_lua_path(redis_url: str, events: Sequence[dict[str, Any]], partitions: int,
                          on_progress: Callable[[int], None]) -> tuple[list[bytes], float, float]:
    """Apply the event set through LeadStore, batched as a worker gets it, and keep every Lua
    call it made.

    Returns (RESP-encoded script calls, seconds, bench-process CPU seconds).
    """
    from redis.asyncio import Redis

    from .. import events as contract
    from .. import scripts
    from ..model import load_model
    from ..state import LeadStore

    model = load_model()
    redis = Redis.from_url(redis_url)
    recorded: list[bytes] = []
    original = scripts.pipelined

    async def recording(client: Any, calls: Sequence[tuple[Any, Sequence[str], Sequence[Any]]]) -> list[Any]:
        for script, keys, args in calls:
            recorded.append(_resp(["EVALSHA", script.sha, len(keys), *keys, *args]))
        return await original(client, calls)

    try:
        await redis.flushdb()
        await scripts.load_all(redis)
        store = LeadStore(redis, model)
        now = int(time.time() * 1000)
        scripts.pipelined = recording  # type: ignore[assignment]
        cpu0, t0 = time.process_time(), time.perf_counter()
        for chunk in worker_batches(events, partitions):
            batch = [(contract.parse(value, now, model.clock_skew), position) for position, value in chunk]
            await store.apply(batch, now)
            on_progress(len(batch))
        return recorded, time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        scripts.pipelined = original  # type: ignore[assignment]
        await redis.aclose()


async def replay(port: int, db: int, commands: list[bytes], redis_pid: int, on_progress: Callable[[int], None], events: int) -> Throughput:
    """Send the recorded calls down one connection as fast as Redis answers them."""
    from redis.asyncio import Redis

    from .. import scripts

    client = Redis(host="127.0.0.1", port=port, db=db)
    await client.flushdb()
    await scripts.load_all(client)
    await client.aclose()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
    writer.write(_resp(["SELECT", db]))
    await writer.drain()
    await reader.readuntil(b"\r\n")
    token = uuid.uuid4().hex.encode()
    done = asyncio.get_running_loop().create_future()

    async def drain_replies() -> None:
        tail = b""
        while True:
            chunk = await reader.read(1 << 20)
            if not chunk:
                break
            tail = (tail + chunk)[-128:]
            if token in tail:
                break
        done.set_result(None)

    redis0 = cpu_seconds(redis_pid)
    t0 = time.perf_counter()
    drainer = asyncio.create_task(drain_replies())
    per_command = events / max(1, len(commands))
    sent = 0.0
    chunk: list[bytes] = []
    size = 0
    for i, command in enumerate(commands):
        chunk.append(command)
        size += len(command)
        if size > 256 * 1024 or i == len(commands) - 1:
            writer.write(b"".join(chunk))
            await writer.drain()
            sent += len(chunk) * per_command
            on_progress(int(sent) - int(sent - len(chunk) * per_command))
            chunk, size = [], 0
    writer.write(_resp(["ECHO", token]))
    await writer.drain()
    await done
    seconds = time.perf_counter() - t0
    redis_cpu = cpu_seconds(redis_pid) - redis0
    drainer.cancel()
    writer.close()
    return Throughput("ceiling: Redis Lua path (replayed, no Kafka)", events, seconds, cpu=redis_cpu, redis_cpu=redis_cpu,
                      note="Redis CPU")


# --- reading final scores ----------------------------------------------------------------------------


async def final_scores(redis_url: str, leads: Sequence[str], at: int) -> dict[str, float]:
    from redis.asyncio import Redis

    from ..model import load_model
    from ..state import LeadStore

    client = Redis.from_url(redis_url)
    try:
        store = LeadStore(client, load_model())
        await store.ready()
        out: dict[str, float] = {}
        for i in range(0, len(leads), 1000):
            chunk = leads[i : i + 1000]
            pipe = client.pipeline(transaction=False)
            for lead in chunk:
                pipe.get(store.keys.lead(lead).state)
            for lead, raw in zip(chunk, await pipe.execute()):
                # as LeadStore.view reads a lead, one pipelined round trip per thousand
                fields = store.fields(raw)
                out[lead] = store.explainer.view(lead, fields, at).score if fields is not None else math.nan
        return out
    finally:
        await client.aclose()


def differing(a: dict[str, float], b: dict[str, float]) -> list[str]:
    return [
        lead for lead in a
        if not (math.isclose(a[lead], b.get(lead, math.nan), rel_tol=1e-9, abs_tol=1e-9))
    ]


# --- worker processes ----------------------------------------------------------------------------


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


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADPULSE_")}
    env.update(extra)
    return env


class Worker(Child):
    """`leadpulse worker` configured by LEADPULSE_* variables, as in production."""

    def __init__(self, workdir: Path, name: str, **settings: Any) -> None:
        from ..dev.embedded import free_port

        self.port = free_port()
        self.settings = {"http_port": self.port, "log_level": "info", **settings}
        env = _child_env({f"LEADPULSE_{k.upper()}": str(v) for k, v in self.settings.items()})
        super().__init__([sys.executable, "-m", "leadpulse", "worker"], env, workdir / f"{name}.log")

    async def get(self, path: str) -> tuple[int, str]:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 5)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body.decode(errors="replace")

    async def ready(self) -> bool:
        with contextlib.suppress(OSError, asyncio.TimeoutError, IndexError, ValueError):
            status, _ = await self.get("/readyz")
            return status == 200
        return False

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
        """The samples of its /metrics (prometheus_client's parser), or None if it did not answer."""
        from prometheus_client.parser import text_string_to_metric_families

        with contextlib.suppress(OSError, asyncio.TimeoutError, IndexError, ValueError):
            status, text = await self.get("/metrics")
            if status == 200:
                return [s for family in text_string_to_metric_families(text) for s in family.samples]
        return None

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
        while (samples := await self.metrics()) is None:
            if time.monotonic() > deadline or not self.alive():
                raise click.ClickException(f"{self.log.name}: /metrics did not answer:\n{self.tail()}")
            await asyncio.sleep(0.2)
        marks = {(s.labels["at"], s.labels["clock"]): s.value for s in samples if s.name == "leadpulse_work_seconds"}
        return Work(int(sum(s.value for s in samples if s.name == "leadpulse_events_total")),
                    marks.get(("start", "unix"), 0.0), marks.get(("end", "unix"), 0.0),
                    marks.get(("start", "cpu"), 0.0), marks.get(("end", "cpu"), 0.0))

    def assignments(self) -> list[int]:
        """The partition counts this worker was assigned, in order (from its info log)."""
        with contextlib.suppress(OSError):
            return [int(n) for n in re.findall(r"assigned (\d+) partitions", self.log.read_text(errors="replace"))]
        return []


class Baseline(Child):
    """The naive Faust agent (see `_baseline_main`) in its own process."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        env = _child_env({"LEADPULSE_BENCH_BASELINE": orjson.dumps(config).decode()})
        argv = [sys.executable, "-c", "from leadpulse.bench.runner import _baseline_main; _baseline_main()"]
        super().__init__(argv, env, workdir / "baseline.log")


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


def measured(name: str, work: Work, trace: CpuTrace, note: str = "", complete: bool = True) -> Throughput:
    """A row from a process's own account of its work; Redis and the broker over the same span."""
    redis_cpu, broker_cpu = trace.between(work.start, work.end) if work.events else (0.0, 0.0)
    return Throughput(name, work.events, work.seconds, cpu=work.cpu, redis_cpu=redis_cpu, broker_cpu=broker_cpu,
                      complete=complete and work.events > 0, note=note)


# --- the naive Faust baseline --------------------------------------------------------------------


def _baseline_main() -> None:  # pragma: no cover - runs in a child process
    """A Faust agent as a user would write it from the Faust tutorial: one event at a time, one
    Redis round trip per event (LeadStore.apply with a one-event batch), the same rules."""
    import faust
    from redis.asyncio import Redis

    from .. import events as contract
    from .. import scripts
    from ..errors import InvalidEvent
    from ..handoff import build, publishes
    from ..model import load_model
    from ..state import LeadStore

    config = orjson.loads(os.environ["LEADPULSE_BENCH_BASELINE"])
    model = load_model()
    app = faust.App(
        config["app_id"], broker=f"kafka://{config['bootstrap']}",
        # Faust's default 60 s session makes a first join wait 30 s on Tansu (docs/architecture.md).
        broker_session_timeout=10, broker_heartbeat_interval=3,
        store="memory://", web_enabled=False, autodiscover=False, topic_replication_factor=1,
        topic_partitions=config["partitions"], consumer_auto_offset_reset="earliest", producer_acks=-1,
    )
    source = app.topic(*config["topics"], key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    handoffs = app.topic(config["handoff_topic"], key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    redis = Redis.from_url(config["redis_url"])
    store = LeadStore(redis, model)
    work = asdict(Work())  # its own account, as the worker keeps in leadpulse_work_seconds

    async def handle(message: Any) -> None:
        now = int(time.time() * 1000)
        try:
            parsed = contract.parse(message.value, now, model.clock_skew)
        except InvalidEvent:
            return
        result = await store.apply([(parsed, f"{message.topic}:{message.partition}:{message.offset}")], now)
        for t in result.transitions:
            if publishes(model, t):
                await handoffs.send(key=t.lead_id.encode(), value=orjson.dumps(build(model, store.explainer, t)))

    @app.agent(source)
    async def score(stream: Any) -> None:
        async for event in stream.events():
            if not work["start"]:
                work["start"], work["cpu_start"] = time.time(), time.process_time()
            await handle(event.message)
            work["events"] += 1
            work["end"], work["cpu_end"] = time.time(), time.process_time()

    @app.timer(0.25)
    async def progress() -> None:
        await redis.set(config["progress_key"], orjson.dumps(work))

    @app.task
    async def load_scripts() -> None:
        await scripts.load_all(redis)

    faust.Worker(app, loglevel="warning", redirect_stdouts=False).execute_from_commandline()


# --- latency at a fixed offered load -------------------------------------------------------------


async def latency_run(bootstrap: str, prefix: str, handoff_topic: str, rate: float, seconds: float,
                      on_progress: Callable[[int], None], worker: Worker, settle_s: float = 300.0) -> dict[str, Any]:
    """Offer `rate` events/s (occurred_at = send time); time each handoff from its trigger's occurred_at,
    until `worker` has handled every offered event and each handoff it published has been read."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from ..dev.simulate import journeys, key_for, topic_for

    total = int(rate * seconds)
    events: list[dict[str, Any]] = []
    for e in journeys(max(50, total // 12), seed=99, prefix=f"lat{uuid.uuid4().hex[:6]}"):
        events.append(e)
        if len(events) >= total:
            break
    occurred: dict[str, int] = {}
    latencies: list[float] = []
    consumer = AIOKafkaConsumer(handoff_topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=5)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1)
    await consumer.start()
    await producer.start()
    stop = asyncio.Event()
    handoffs = {"n": 0, "timed": 0}

    async def read() -> None:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=50)
            arrived = time.time()
            for records in batch.values():
                for r in records:
                    handoffs["n"] += 1
                    trigger = orjson.loads(r.value).get("triggered_by_event_id")
                    if trigger in occurred:
                        handoffs["timed"] += 1
                        latencies.append(arrived - occurred[trigger] / 1000)

    reader = asyncio.create_task(read())
    try:
        sent = 0
        pending: list[Any] = []
        t0 = time.perf_counter()
        while sent < total:
            due = min(total, int((time.perf_counter() - t0) * rate))
            while sent < due:
                e = events[sent]
                e["occurred_at"] = int(time.time() * 1000)
                occurred[e["event_id"]] = e["occurred_at"]
                pending.append(await producer.send(topic_for(e, prefix), orjson.dumps(e), key=key_for(e)))
                sent += 1
            if len(pending) > 2000:
                await asyncio.gather(*pending)
                pending.clear()
            on_progress(sent)
            await asyncio.sleep(0.005)
        offered = sent / (time.perf_counter() - t0)
        await asyncio.gather(*pending)
        # The worker's own counts say when the last handoffs are in: a slow machine loses none of
        # them (they are the tail of the distribution), a fast one waits for nothing.
        deadline = time.monotonic() + settle_s
        while True:
            done, published = await worker.counts()
            if done >= total and handoffs["n"] >= published:
                break
            if time.monotonic() > deadline or not worker.alive():
                raise click.ClickException(
                    f"latency: {done:,} of {total:,} events handled, {handoffs['n']:,} of {published:,} handoffs "
                    f"read after {settle_s:.0f} s:\n{worker.tail()}")
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await reader
        await producer.stop()
        await consumer.stop()
    latencies.sort()

    def q(p: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 1) if latencies else None

    return {
        "offered_events_per_s": round(offered, 1), "events": total, "handoffs": handoffs["n"],
        "timed_handoffs": handoffs["timed"], "p50_ms": q(0.50), "p90_ms": q(0.90), "p99_ms": q(0.99),
        "max_ms": round(latencies[-1] * 1000, 1) if latencies else None,
    }


# --- Redis memory per lead -------------------------------------------------------------------------


async def redis_memory(port: int, source_db: int, target_db: int, target_leads: int,
                       on_progress: Callable[[int], None]) -> dict[str, Any]:
    """Bytes per lead: sampled MEMORY USAGE of the measured leads, and used_memory growth when the
    measured leads are copied (under new ids) up to `target_leads`: state, indexes, dedup apart,
    and apart too the replay logs and traits (only some leads have them)."""
    from redis.asyncio import Redis

    from ..keys import Keys

    keys = Keys()
    src = Redis(host="127.0.0.1", port=port, db=source_db)
    dst = Redis(host="127.0.0.1", port=port, db=target_db)
    try:
        leads: list[str] = []
        async for key in src.scan_iter(match=f"{keys.prefix}:l{{*}}:v", count=5000):
            k = key.decode()
            leads.append(k[len(keys.prefix) + 3 : -3])
        if not leads:
            return {}
        pipe = src.pipeline(transaction=False)
        for lead in leads:
            pipe.exists(keys.lead(lead).replay)
            pipe.exists(keys.lead(lead).traits)
        got = await pipe.execute()
        with_replay = {lead for lead, n in zip(leads, got[0::2]) if n}
        with_traits = {lead for lead, n in zip(leads, got[1::2]) if n}
        rng = random.Random(5)
        sample = rng.sample(leads, min(2000, len(leads)))
        pipe = src.pipeline(transaction=False)
        for lead in sample:
            k = keys.lead(lead)
            pipe.memory_usage(k.state, samples=0)
            pipe.memory_usage(k.dedup, samples=0)
            pipe.strlen(k.state)
            pipe.zcard(k.dedup)
            pipe.object("encoding", k.state)
            pipe.memory_usage(k.replay, samples=0)
            pipe.memory_usage(k.traits, samples=0)
        got = await pipe.execute()
        state_b = [x or 0 for x in got[0::7]]
        dedup_b = [x or 0 for x in got[1::7]]
        value_b = got[2::7]
        dedup_n = got[3::7]
        encodings: dict[str, int] = {}
        for e in got[4::7]:
            name = e.decode() if isinstance(e, bytes) else str(e)
            encodings[name] = encodings.get(name, 0) + 1
        replay_b = [x for x in got[5::7] if x]
        traits_b = [x for x in got[6::7] if x]
        due = {m.decode(): s for m, s in await src.zrange(keys.due, 0, -1, withscores=True)}
        top = {m.decode(): s for m, s in await src.zrange(keys.top, 0, -1, withscores=True)}

        await dst.flushdb()
        copies = max(1, math.ceil(target_leads / len(leads)))
        n_target = copies * len(leads)

        async def used() -> int:
            return int((await dst.info("memory"))["used_memory"])

        async def copy(kind: str) -> int:
            # COPY … DB n runs on the source database's connection; the index ZADDs on the target's.
            client = dst if kind == "index" else src
            before = await used()
            batch = client.pipeline(transaction=False)
            queued = 0
            for c in range(copies):
                for lead in leads:
                    new = f"{lead}~{c}"
                    old_keys, new_keys = keys.lead(lead), keys.lead(new)
                    if kind == "state":
                        batch.execute_command("COPY", old_keys.state, new_keys.state, "DB", target_db)
                    elif kind == "dedup":
                        batch.execute_command("COPY", old_keys.dedup, new_keys.dedup, "DB", target_db)
                    elif kind == "replay":
                        if lead in with_replay:
                            batch.execute_command("COPY", old_keys.replay, new_keys.replay, "DB", target_db)
                    elif kind == "traits":
                        if lead in with_traits:
                            batch.execute_command("COPY", old_keys.traits, new_keys.traits, "DB", target_db)
                    else:
                        if lead in due:
                            batch.zadd(keys.due, {new: due[lead]})
                        if lead in top:
                            batch.zadd(keys.top, {new: top[lead]})
                    queued += 1
                    if queued >= 10_000:
                        await batch.execute()
                        on_progress(queued)
                        batch = client.pipeline(transaction=False)
                        queued = 0
            if queued:
                await batch.execute()
                on_progress(queued)
            return await used() - before

        state = await copy("state")
        index = await copy("index")
        dedup = await copy("dedup")
        replay = await copy("replay")
        traits = await copy("traits")
        await dst.flushdb()
        mean = lambda xs: sum(xs) / len(xs) if xs else 0.0
        return {
            "measured_leads": len(leads),
            "sampled": len(sample),
            "memory_usage_state_bytes": round(mean(state_b), 1),
            "memory_usage_dedup_bytes": round(mean(dedup_b), 1),
            "state_value_bytes_mean": round(mean(value_b), 1),
            "dedup_events_mean": round(mean(dedup_n), 1),
            "state_encodings": encodings,
            "at_leads": n_target,
            "state_bytes_per_lead": round(state / n_target, 1),
            "index_bytes_per_lead": round(index / n_target, 1),
            "dedup_bytes_per_lead": round(dedup / n_target, 1),
            "dedup_bytes_per_event": round(dedup / n_target / max(1e-9, mean(dedup_n)), 1),
            "staged_share": round(len(top) / len(leads), 3),
            # kept apart from the state, for the leads that have them
            "replay_share": round(len(with_replay) / len(leads), 3),
            "replay_bytes_per_lead": round(replay / n_target, 1),
            "memory_usage_replay_bytes": round(mean(replay_b), 1),
            "traits_share": round(len(with_traits) / len(leads), 3),
            "traits_bytes_per_lead": round(traits / n_target, 1),
            "memory_usage_traits_bytes": round(mean(traits_b), 1),
        }
    finally:
        await src.aclose()
        await dst.aclose()


# --- the whole run -------------------------------------------------------------------------------


class Runner:
    def __init__(self, *, events: int, leads: int, seed: int, rate: float, latency_seconds: float,
                 baseline_seconds: float, memory_leads: int, partitions: int, workdir: Path,
                 stages: set[str], progress: Any, batch_max: int | None = None, rss_events: int = 0,
                 rss_max_leads: int = 1_000_000) -> None:
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
        self.baseline_done = 0
        self.leadpulse_done = 0
        self.rss_events, self.rss_max_leads = rss_events, rss_max_leads

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

    def worker(self, name: str, bootstrap: str, redis_url: str, **extra: Any) -> Worker:
        settings = {
            "kafka_bootstrap": bootstrap, "redis_url": redis_url, "group_id": f"{self.tag}-{name}",
            "topic_prefix": self.prefix, "handoff_topic": f"{self.prefix}{name}.handoff",
            "dlq_topic": f"{self.prefix}{name}.dlq", "partitions": self.partitions, **self.extra, **extra,
        }
        w = Worker(self.workdir, name, **settings)
        self.children.append(w)
        return w

    def stop_children(self) -> None:
        for child in self.children:
            child.stop()

    async def run(self, stack: Any, report: Report) -> None:
        bootstrap = stack.broker.bootstrap
        port = stack.redis.port
        pids = (stack.redis.proc.pid, stack.broker.proc.pid)

        def url(db: int) -> str:
            return f"redis://127.0.0.1:{port}/{db}"

        async def flush(*dbs: int) -> None:
            from redis.asyncio import Redis

            for db in dbs:
                client = Redis.from_url(url(db))
                await client.flushdb()
                await client.aclose()

        from redis.asyncio import Redis

        admin = Redis.from_url(url(0))
        # Appends stay (everysec, as in `leadpulse dev`), but no AOF rewrite: a rewrite of the
        # bench's earlier stages would fork and take a core from whichever stage runs then.
        await admin.config_set("auto-aof-rewrite-percentage", 0)
        await admin.aclose()

        # the RSS soak (off unless --rss-events): its own topics and Redis db, first on a fresh broker
        if "rss" in self.stages and self.rss_events > 0:
            from .rss import DB_RSS, rss_soak

            report.rss_soak = await rss_soak(
                bootstrap=bootstrap, redis_url=url(DB_RSS), pids=pids, workdir=self.workdir, events=self.rss_events,
                max_leads=self.rss_max_leads, seed=self.seed, partitions=self.partitions, tag=self.tag,
                extra=self.extra, children=self.children, task=self.task)
            if not self.stages - {"rss"}:
                return

        # 0. the event set, produced once
        start_ms = int(time.time() * 1000) - 4 * 86_400_000  # in the past; no decay crossing is due during the run
        events = event_set(self.n_events, self.n_leads, self.seed, start_ms)
        leads = lead_ids(events)
        report.events, report.leads, report.journeys = len(events), len(leads), self.n_leads
        total = len(events)
        await create_topics(bootstrap, self.topics, self.partitions)
        produced = self.task("produce the event set", total)
        broker0 = cpu_seconds(pids[1])
        seconds = await produce(bootstrap, self.prefix, events, produced)
        report.produce = {"events": total, "seconds": round(seconds, 2), "events_per_s": round(total / seconds, 1),
                          "broker_cpu_s": round(cpu_seconds(pids[1]) - broker0, 2)}
        ends = await end_offsets(bootstrap, self.topics)
        if sum(ends.values()) != total:
            raise click.ClickException(f"the broker holds {sum(ends.values())} events, {total} were produced")

        # 1. ceiling: consuming without processing
        if "ceilings" in self.stages:
            report.rows.append(await ceiling_consume(bootstrap, self.topics, total, pids[1],
                                                     self.task("ceiling: broker read", total)))
            # 2. ceiling: Redis applying the same updates through the Lua path
            recorded, rec_s, rec_cpu = await record_lua_path(url(DB_RECORD), events, self.partitions,
                                                             self.task("record the Lua calls (in-process LeadStore)", total))
            row = await replay(port, DB_REPLAY, recorded, pids[0], self.task("ceiling: Redis Lua path", total), total)
            row.note += f"; recorded in-process at {total / rec_s:,.0f} events/s ({rec_cpu / total * 1e6:.1f} client CPU s/M)"
            report.rows.append(row)
            del recorded
            await flush(DB_RECORD, DB_REPLAY)

        at = int(time.time() * 1000)
        scores: dict[str, dict[str, float]] = {}

        # 3. baseline: the naive Faust agent
        if "baseline" in self.stages:
            from redis.asyncio import Redis

            client = Redis.from_url(url(DB_BASELINE))
            await client.flushdb()
            config = {
                "app_id": f"{self.tag}-naive", "bootstrap": bootstrap, "topics": self.topics, "partitions": self.partitions,
                "handoff_topic": f"{self.prefix}naive.handoff", "redis_url": url(DB_BASELINE), "progress_key": "bench:progress",
            }
            await create_topics(bootstrap, [config["handoff_topic"]], self.partitions)
            baseline = Baseline(self.workdir, config)
            self.children.append(baseline)

            async def baseline_work() -> Work:
                raw = await client.get("bench:progress")
                return Work(**orjson.loads(raw)) if raw else Work()

            async def count() -> int:
                return (await baseline_work()).events

            with CpuTrace(pids) as trace:
                await follow(baseline, count, total, on_progress=self.task(BASELINE, total), time_box=self.baseline_seconds)
                work = await baseline_work()
            complete = work.events >= total
            self.baseline_done = work.events
            row = measured(BASELINE, work, trace, "worker CPU", complete)
            if not complete:
                row.note += f"; time-boxed at {self.baseline_seconds:.0f} s ({work.events:,} of {total:,} events)"
            report.rows.append(row)
            self.finish()
            baseline.stop()
            await client.aclose()
            if complete:
                scores["baseline"] = await final_scores(url(DB_BASELINE), leads, at)
            await flush(DB_BASELINE)

        # 4. LeadPulse: the real worker
        if "leadpulse" in self.stages:
            from redis.asyncio import Redis

            client = Redis.from_url(url(DB_LEADPULSE))
            await client.flushdb()
            await client.aclose()
            with CpuTrace(pids) as trace:
                worker = self.worker("leadpulse", bootstrap, url(DB_LEADPULSE), log_level="warning")
                await worker.wait_ready()
                samples = await follow(worker, worker.processed, total, on_progress=self.task(LEADPULSE, total))
                work = await worker.work()
            row = measured(LEADPULSE, work, trace, "worker CPU")
            self.leadpulse_done = work.events
            report.rows.append(row)
            rss, peak = memory(worker.pid)
            report.worker_memory = {
                "peak_rss_mib": _mib(peak),
                "rss_at_10pct_mib": _mib(_rss_at(samples, 0.1, total)),
                "rss_at_50pct_mib": _mib(_rss_at(samples, 0.5, total)),
                "rss_at_end_mib": _mib(rss),
                "events": total,
            }
            worker.stop()
            scores["leadpulse"] = await final_scores(url(DB_LEADPULSE), leads, at)

        base_row, lp_row = report.row(BASELINE), report.row(LEADPULSE)
        if base_row:
            report.checks["baseline_events_done"] = self.baseline_done
        if lp_row:
            report.checks["leadpulse_events_done"] = self.leadpulse_done
        if "baseline" in scores and "leadpulse" in scores:
            diff = differing(scores["leadpulse"], scores["baseline"])
            report.checks["leads_compared"] = len(scores["leadpulse"])
            report.checks["baseline_vs_leadpulse_leads_differing"] = len(diff)
            report.checks["baseline_vs_leadpulse_examples"] = diff[:5]

        # 5. memory per lead in Redis
        if "memory" in self.stages and "leadpulse" in scores:
            report.redis_memory = await redis_memory(port, DB_LEADPULSE, DB_MEMORY, self.memory_leads,
                                                     self.task(f"Redis memory at {self.memory_leads:,} leads", None))
            self.finish()

        # 6. two workers, one group, a rebalance mid-run
        if "rebalance" in self.stages:
            from redis.asyncio import Redis

            client = Redis.from_url(url(DB_TWO))
            await client.flushdb()
            await client.aclose()
            shared = {"group_id": f"{self.tag}-two", "handoff_topic": f"{self.prefix}two.handoff", "dlq_topic": f"{self.prefix}two.dlq"}
            first = self.worker("two-a", bootstrap, url(DB_TWO), **shared)
            second: Worker | None = None
            advance = self.task("two workers, rebalance mid-run", total)
            await first.wait_ready()
            group = f"{self.tag}-two"
            t0 = time.perf_counter()
            shown = 0
            second_after = 0
            while True:
                a = await first.processed()
                b = await second.processed() if second else 0
                if a + b > shown:
                    advance(min(total, a + b) - min(total, shown))
                    shown = a + b
                if second is None and a >= total // 3:
                    # Polled: on a fast machine the first may be done before the second starts; the
                    # report says when it did, rather than claiming a third.
                    second, second_after = self.worker("two-b", bootstrap, url(DB_TWO), **shared), a
                if second is not None and a + b >= total and await committed_all(bootstrap, group, self.topics, ends):
                    break
                if time.perf_counter() - t0 > 900:
                    raise click.ClickException("two workers did not finish within 15 minutes")
                for w in (first, second):
                    if w is not None and not w.alive():
                        raise click.ClickException(f"{w.log.name} exited:\n{w.tail()}")
                await asyncio.sleep(0.25)
            works = [await first.work(), await second.work() if second else Work()]
            assigned = (first.assignments(), second.assignments() if second else [])
            first.stop()
            if second:
                second.stop()
            two = await final_scores(url(DB_TWO), leads, at)
            busy = [w for w in works if w.events]
            counts = [w.events for w in works]
            report.two_workers = {
                "events": total,
                # from the first batch either received to the last either finished (their own marks)
                "seconds": round(max(w.end for w in busy) - min(w.start for w in busy), 2) if busy else 0.0,
                "second_started_after_events": second_after,
                "processed_by_each": counts, "replayed_after_rebalance": max(0, sum(counts) - total),
                "assignments": list(assigned),
            }
            if "leadpulse" in scores:
                diff = differing(scores["leadpulse"], two)
                report.two_workers["leads_differing_from_one_worker"] = len(diff)
                report.two_workers["examples"] = diff[:5]

        # 7. latency at a fixed offered load
        if "latency" in self.stages:
            from redis.asyncio import Redis

            client = Redis.from_url(url(DB_LATENCY))
            await client.flushdb()
            await client.aclose()
            prefix = f"bench{self.tag}lat."
            handoff = f"{prefix}handoff"
            await create_topics(bootstrap, [f"{prefix}{s}" for s in SOURCES] + [handoff], self.partitions)
            w = Worker(self.workdir, "latency", kafka_bootstrap=bootstrap, redis_url=url(DB_LATENCY),
                       group_id=f"{self.tag}-lat", topic_prefix=prefix, handoff_topic=handoff,
                       dlq_topic=f"{prefix}dlq", partitions=self.partitions, log_level="warning", **self.extra)
            self.children.append(w)
            await w.wait_ready()
            await asyncio.sleep(1.0)
            report.latency = await latency_run(bootstrap, prefix, handoff, self.rate, self.latency_seconds,
                                               _absolute(self.task(f"latency at {self.rate:,.0f} events/s offered", int(self.rate * self.latency_seconds))),
                                               w)
            work = await w.work()
            # its CPU over its own span: from the first offered batch to the last one handled
            report.latency["worker_cpu_share"] = round(work.cpu / work.seconds, 3) if work.seconds else None
            w.stop()


def _absolute(advance: Callable[[int], None]) -> Callable[[int], None]:
    state = {"n": 0}

    def update(n: int) -> None:
        if n > state["n"]:
            advance(n - state["n"])
            state["n"] = n

    return update


def _rss_at(samples: list[Sample], share: float, total: int) -> int | None:
    """RSS from the first poll in [share, share + 10 %) of the events, if one fell there: a run
    faster than the polls has none, and a later sample must not stand in for it."""
    for s in samples:
        if share * total <= s.count < (share + 0.1) * total:
            return s.rss
    return None


def _mib(n: int | None) -> float | None:
    return round(n / 2**20, 1) if n is not None else None


# --- output ----------------------------------------------------------------------------------------


def _pct(share: float | None) -> str:
    return "–" if share is None else f"{share * 100:.0f} %"


def render(report: Report) -> str:
    d = report.as_dict()
    lines = []
    m = report.machine
    if not report.events and report.rss_soak:
        lines.append("LeadPulse bench — the RSS soak alone (stage rss)")
    else:
        lines.append(f"LeadPulse bench — {report.events:,} events touching {report.leads:,} leads "
                     f"(the first events, in time order, of {report.journeys:,} leads' journeys)")
    lines.append(f"machine: {m['nproc']} × {m['cpu']}, {m['ram_gib']} GiB RAM, Python {m['python']}; "
                 f"broker and Redis on the same machine; load average {report.load_before:.2f} before, {report.load_after:.2f} after")
    lines.append("")
    header = f"{'':48} {'events/s':>10} {'CPU s/M':>9} {'× baseline':>10} {'Redis CPU s/M':>14} {'broker CPU s/M':>15}"
    if d["rows"]:
        lines.append(header)
        lines.append("-" * len(header))
    for r in d["rows"]:
        ratio = f"{r['ratio_to_baseline']:.1f}×" if r["ratio_to_baseline"] else "–"
        lines.append(f"{r['name']:48} {r['events_per_s']:>10,.0f} {r['cpu_s_per_million']:>9.1f} {ratio:>10} "
                     f"{r['redis_cpu_s_per_million']:>14.1f} {r['broker_cpu_s_per_million']:>15.1f}")
    for r in d["rows"]:
        if r["note"]:
            lines.append(f"  {r['name']}: {r['note']}")
    lines.append("")
    if report.latency:
        lat = report.latency
        lines.append(f"latency occurred_at → handoff record at {lat['offered_events_per_s']:,.0f} events/s offered: "
                     f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms (max {lat['max_ms']} ms; "
                     f"{lat['timed_handoffs']} handoffs timed; worker CPU {_pct(lat['worker_cpu_share'])} while it worked)")
    if report.worker_memory:
        wm = report.worker_memory
        at = [wm[k] for k in ("rss_at_10pct_mib", "rss_at_50pct_mib", "rss_at_end_mib")]
        lines.append(f"worker RSS: peak {wm['peak_rss_mib']} MiB; at 10 % / 50 % / 100 % of {wm['events']:,} events: "
                     + " / ".join("–" if x is None else f"{x}" for x in at) + " MiB"
                     + (" (–: no poll of the worker fell in that tenth of the run)" if None in at else ""))
    if report.redis_memory:
        rm = report.redis_memory
        lines.append(f"Redis per lead at {rm['at_leads']:,} leads: state {rm['state_bytes_per_lead']:,.0f} B "
                     f"+ indexes {rm['index_bytes_per_lead']:,.0f} B; dedup window {rm['dedup_bytes_per_lead']:,.0f} B "
                     f"({rm['dedup_bytes_per_event']:.0f} B per event kept); replay logs {rm['replay_bytes_per_lead']:,.0f} B "
                     f"({rm['replay_share'] * 100:.0f} % of leads), traits {rm['traits_bytes_per_lead']:,.0f} B "
                     f"({rm['traits_share'] * 100:.0f} % of leads) — MEMORY USAGE state {rm['memory_usage_state_bytes']:,.0f} B, "
                     f"value {rm['state_value_bytes_mean']:,.0f} B, encodings {rm['state_encodings']}")
    if report.two_workers:
        tw = report.two_workers
        lines.append(f"two workers, one group, second started after {tw['second_started_after_events']:,} events: "
                     f"processed {tw['processed_by_each']} "
                     f"(partitions assigned over time {tw['assignments']}), {tw['replayed_after_rebalance']} replayed, "
                     f"leads differing from one worker: {tw.get('leads_differing_from_one_worker', 'n/a')}")
    if report.rss_soak:
        from .rss import render_line

        lines.append(render_line(report.rss_soak))
    if report.checks:
        lines.append(f"checks: {report.checks}")
    lines.append(f"command: {report.command}   ({report.seconds:.0f} s)")
    return "\n".join(lines)


STAGES = ("ceilings", "baseline", "leadpulse", "memory", "rebalance", "latency", "rss")


@click.command()
@click.option("--events", default=300_000, show_default=True, help="events in the set (the first ones, in time order)")
@click.option("--leads", default=100_000, show_default=True, help="leads whose journeys make the event set")
@click.option("--seed", default=7, show_default=True, help="random seed of the journeys")
@click.option("--rate", default=5000.0, show_default=True, help="offered events/s for the latency measurement")
@click.option("--latency-seconds", default=20.0, show_default=True, help="how long to offer that load")
@click.option("--baseline-seconds", default=30.0, show_default=True, help="time box of the naive baseline")
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
          memory_leads: int, partitions: int, batch_max: int | None, rss_events: int, rss_max_leads: int,
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
    runner: Runner | None = None
    try:
        with Stack(workdir / "services") as stack, progress:
            runner = Runner(events=events, leads=leads, seed=seed, rate=rate, latency_seconds=latency_seconds,
                            baseline_seconds=baseline_seconds, memory_leads=memory_leads, partitions=partitions,
                            workdir=workdir, stages=set(STAGES) - set(skip), progress=progress, batch_max=batch_max,
                            rss_events=rss_events, rss_max_leads=rss_max_leads)
            try:
                asyncio.run(runner.run(stack, report))
            finally:
                runner.stop_children()
    finally:
        if tmp is not None:
            tmp.cleanup()
    report.load_after = loadavg()
    report.seconds = time.perf_counter() - started
    if as_json:
        click.echo(orjson.dumps({**report.as_dict(), "table": render(report)}, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(render(report))


if __name__ == "__main__":
    bench()
