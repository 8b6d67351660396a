"""Stage `ceilings`: the two rates no worker can beat on this machine.

- broker read path: raw aiokafka `getmany()` over every input partition, no processing;
- Redis write path: the score updates of the event set through the project's batched Lua path,
  recorded from an in-process LeadStore once (batched as a worker gets them), then replayed down
  one connection as fast as Redis answers, no Kafka.
Both time themselves in-process.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from .context import DB_RECORD, DB_REPLAY, Context
from .eventset import EventSet
from .measure import cpu_seconds
from .report import Report, Throughput

BATCH = 2000  # the worker's default LEADPULSE_BATCH_MAX


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
                          on_progress: Callable[[int], None],
                          batches: list[list[tuple[str, bytes]]] | None = None) -> tuple[list[bytes], float, float]:
    """Apply the event set through LeadStore, batched as a worker gets it (or as `batches` cut
    it), and keep every Lua call it made.

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

    class Recording(scripts.Scripts):
        async def pipelined(self, calls: Sequence[tuple[scripts.Script, Sequence[str], Sequence[Any]]]) -> list[Any]:
            for script, keys, args in calls:
                recorded.append(_resp(["EVALSHA", script.sha, len(keys), *keys, *args]))
            return await super().pipelined(calls)

    try:
        await redis.flushdb()
        await scripts.load_all(redis)
        store = LeadStore(redis, model)
        store.scripts = Recording(redis)
        now = int(time.time() * 1000)
        cpu0, t0 = time.process_time(), time.perf_counter()
        for chunk in batches if batches is not None else worker_batches(events, partitions):
            batch = [(contract.parse(value, now, model.clock_skew), position) for position, value in chunk]
            await store.apply(batch, now)
            on_progress(len(batch))
        return recorded, time.perf_counter() - t0, time.process_time() - cpu0
    finally:
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


async def stage(ctx: Context, data: EventSet, report: Report) -> None:
    total = data.total
    redis_pid, broker_pid = ctx.pids
    report.rows.append(await ceiling_consume(ctx.bootstrap, ctx.topics, total, broker_pid,
                                             ctx.task("ceiling: broker read", total)))
    recorded, rec_s, rec_cpu = await record_lua_path(ctx.url(DB_RECORD), data.events, ctx.partitions,
                                                     ctx.task("record the Lua calls (in-process LeadStore)", total))
    row = await replay(ctx.port, DB_REPLAY, recorded, redis_pid, ctx.task("ceiling: Redis Lua path", total), total)
    row.note += f"; recorded in-process at {total / rec_s:,.0f} events/s ({rec_cpu / total * 1e6:.1f} client CPU s/M)"
    report.rows.append(row)
    del recorded
    await ctx.flush(DB_RECORD, DB_REPLAY)
