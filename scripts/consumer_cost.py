"""What reading the input topics costs the worker's process: aiokafka's `getmany()` (the worker's
consumer, pure-Python protocol) against confluent-kafka's `consume()` (librdkafka, C), through the
embedded broker (docs/performance.md, "The consumer in C, measured").

confluent-kafka is not a dependency: `pip install confluent-kafka` first. Two measurements, each
client in a fresh consumer group of its own, the clients alternated --runs times:

- `throughput`: --events of the bench's event set are produced to the five input topics first
  (--partitions each), then each client reads them all as fast as it can; CPU per event of the
  reading process (every thread: librdkafka fetches in its own).
- `rate`: a separate process offers --rate events/s for --seconds while each client reads with
  the worker's fetch wait (20 ms) and returns what has arrived (batches as the worker's fetch stage
  sees them); the reader's share of a core and its CPU per non-empty batch.

    python scripts/consumer_cost.py throughput [--events 200000] [--runs 2]
    python scripts/consumer_cost.py rate [--rate 500] [--seconds 15] [--runs 2]
"""

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson

try:
    import confluent_kafka
except ImportError:
    sys.exit("confluent-kafka is not installed: pip install confluent-kafka")
from aiokafka import AIOKafkaConsumer

from leadpulse.bench import eventset, hop
from leadpulse.bench.eventset import create_topics, event_set, started_producer
from leadpulse.bench.hop import LINGER_MS
from leadpulse.dev.embedded import Stack
from leadpulse.dev.simulate import key_for, topic_for
from leadpulse.events import SOURCES

PREFIX = "cost."
TOPICS = [f"{PREFIX}{s}" for s in SOURCES]
FETCH_WAIT_MS = 20  # the worker's (LEADPULSE_BATCH_WAIT_MS)
BATCH = 2000  # the worker's most events per batch (LEADPULSE_BATCH_MAX)


def cpu() -> float:
    """This process's CPU seconds, every thread."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def events(n: int) -> list[dict[str, Any]]:
    return event_set(n, max(1, n // 3), 7, int(time.time() * 1000) - 86_400_000)


async def offer(bootstrap: str, records: list[dict[str, Any]], rate: float) -> None:
    """`records` at `rate` a second, paced and produced as the bench's latency stage offers its load."""
    raws = [(topic_for(e, PREFIX), key_for(e), orjson.dumps(e)) for e in records]
    producer = await started_producer(bootstrap, TOPICS, acks="all", linger_ms=LINGER_MS)
    try:
        await hop.offer(len(raws), rate, lambda i: producer.send(raws[i][0], raws[i][2], key=raws[i][1]), lambda _: None)
    finally:
        await producer.stop()


class Reader(Protocol):
    """One client in its own group; `read()` returns the records that arrived (maybe none)."""

    async def start(self, bootstrap: str, group: str, earliest: bool) -> None: ...
    async def read(self) -> int: ...
    async def stop(self) -> None: ...


class AioReader(Reader):
    async def start(self, bootstrap: str, group: str, earliest: bool) -> None:
        self.consumer = AIOKafkaConsumer(*TOPICS, bootstrap_servers=bootstrap, group_id=group,
                                         enable_auto_commit=False, fetch_max_wait_ms=FETCH_WAIT_MS,
                                         auto_offset_reset="earliest" if earliest else "latest")
        await self.consumer.start()
        while not self.consumer.assignment():
            await self.consumer.getmany(timeout_ms=100)

    async def read(self) -> int:
        n = 0
        for records in (await self.consumer.getmany(timeout_ms=100, max_records=BATCH)).values():
            for r in records:
                r.value  # noqa: B018 - what the worker touches first
            n += len(records)
        return n

    async def stop(self) -> None:
        await self.consumer.stop()


class CReader(Reader):
    """confluent-kafka's consume() blocks, releasing the GIL: as an asyncio worker would call it,
    on a thread. `timeout` is the worker's fetch wait: it returns what arrived by then."""

    async def start(self, bootstrap: str, group: str, earliest: bool) -> None:
        self.consumer = confluent_kafka.Consumer({
            "bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
            "auto.offset.reset": "earliest" if earliest else "latest", "fetch.wait.max.ms": FETCH_WAIT_MS})
        self.consumer.subscribe(TOPICS)
        while not self.consumer.assignment():
            await asyncio.to_thread(self.consumer.consume, BATCH, 0.1)

    async def read(self) -> int:
        messages = await asyncio.to_thread(self.consumer.consume, BATCH, FETCH_WAIT_MS / 1000)
        for m in messages:
            if m.error():
                raise RuntimeError(m.error())
            m.value()
        return len(messages)

    async def stop(self) -> None:
        await asyncio.to_thread(self.consumer.close)


CLIENTS: dict[str, Callable[[], Reader]] = {"aiokafka getmany": AioReader, "confluent-kafka consume": CReader}


async def throughput(bootstrap: str, total: int, reader: Reader, group: str) -> str:
    await reader.start(bootstrap, group, earliest=True)
    n, batches, t0, c0 = 0, 0, None, 0.0
    while n < total:
        got = await reader.read()
        if got and t0 is None:  # from the first record: the group's join is not the reading
            t0, c0 = time.perf_counter(), cpu()
        n, batches = n + got, batches + (got > 0)
    wall, used = time.perf_counter() - (t0 or 0), cpu() - c0
    await reader.stop()
    return f"{n:,} events in {batches:,} batches: {n / wall:,.0f} events/s, {1e6 * used / n:.2f} µs of CPU an event"


async def at_rate(bootstrap: str, rate: float, seconds: float, reader: Reader, group: str) -> str:
    await reader.start(bootstrap, group, earliest=False)
    offer = await asyncio.create_subprocess_exec(sys.executable, __file__, "_offer", bootstrap, str(rate),
                                                 str(seconds + 3), stdout=asyncio.subprocess.PIPE)
    assert offer.stdout is not None
    await offer.stdout.readline()  # its events made: the offer starts
    await asyncio.sleep(1)
    n, batches, t0, c0 = 0, 0, time.perf_counter(), cpu()
    while time.perf_counter() - t0 < seconds:
        got = await reader.read()
        n, batches = n + got, batches + (got > 0)
    wall, used = time.perf_counter() - t0, cpu() - c0
    await reader.stop()
    await offer.wait()
    return (f"{n:,} events in {batches:,} batches ({n / max(batches, 1):.1f} each) over {wall:.1f} s: "
            f"{100 * used / wall:.1f} % of a core, {1e3 * used / max(batches, 1):.2f} ms of CPU a batch")


def main() -> None:
    if sys.argv[1:2] == ["_offer"]:  # the offering process of `rate`
        bootstrap, rate, seconds = sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
        records = events(int(rate * seconds))
        print("offering", flush=True)
        asyncio.run(offer(bootstrap, records, rate))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["throughput", "rate"])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    print(f"librdkafka {confluent_kafka.libversion()[0]}, confluent-kafka {confluent_kafka.version()}")
    with Stack(tempfile.mkdtemp(prefix="consumer-cost-")) as stack:
        bootstrap = stack.broker.bootstrap
        asyncio.run(create_topics(bootstrap, TOPICS, args.partitions))
        if args.mode == "throughput":
            asyncio.run(eventset.produce(bootstrap, PREFIX, events(args.events), lambda _: None))
        for run in range(args.runs):
            for i, (name, client) in enumerate(CLIENTS.items()):
                group = f"cost-{run}-{i}"
                if args.mode == "throughput":
                    line = asyncio.run(throughput(bootstrap, args.events, client(), group))
                else:
                    line = asyncio.run(at_rate(bootstrap, args.rate, args.seconds, client(), group))
                print(f"{name}: {line}", flush=True)


if __name__ == "__main__":
    main()
