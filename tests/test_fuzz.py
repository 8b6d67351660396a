"""No input stops the worker: >= 10,000 generated near-valid events through the real worker
process, a real Tansu broker and a real redis-server.

The events follow the contract's shapes and break them the ways real producers do: wrong types,
extreme numbers (integral and huge floats, 64-bit edges, big integer literals), nested and huge
values, odd unicode (bidi, zero-width, control characters, unpaired surrogate escapes), braces
in ids (`}x`, `{x}`, `a{b}c`), duplicates, anonymous visitors and links. Afterwards a normal event
behind them on every partition of every input topic is scored, the worker never restarted, and
every message is accounted for: scored, duplicate or anonymous by the worker's count, or
dead-lettered, by the dead-letter topic itself.

LEADPULSE_FUZZ_EVENTS sets the size (default 10,000, what CI runs) and LEADPULSE_FUZZ_SEED the seed.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from leadpulse.dev.embedded import RedisServer, TansuBroker
from leadpulse.handoff import iso

from tests.support.kafkatools import WorkerProcess, consume_until, running, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SOURCES = ("web", "email", "webinar", "profile", "crm")
PARTITIONS = 4
COUNT = int(os.environ.get("LEADPULSE_FUZZ_EVENTS", "10000"))
SEED = int(os.environ.get("LEADPULSE_FUZZ_SEED", "20261128"))
DAY = 86_400_000

TYPES = {
    "web": ["page_view", "form_submit", "demo_request", "content_download"],
    "email": ["delivered", "open", "click", "reply", "bounce", "unsubscribe", "spam_report"],
    "webinar": ["registered", "attended", "no_show", "question_asked"],
    "profile": ["identify", "alias"],
    "crm": ["sql_accepted", "sql_rejected", "opportunity_created", "won", "lost"],
}
ODD_TEXT = [
    "}x", "{x}", "a{b}c", "}", "{", "{}", "}{", "{{x}}", "\u202eevil\u202c", "\u2066iso\u2069", "zero\u200bwidth",
    "e\u0301\u0301", "😀👩‍👩‍👧", "\u2028line\u2029", "\ufeffbom", "名前-ünï", " ", "\\", '"', "%00", "../..", "\x7f",
    "tab\there", "nul\x00", "\x85next", "\ud7ff\ue000\uffff", "\U0010ffff", "x" * 256, "x" * 257, "",
]
EXTREME = [
    0, -0.0, 1, -1, 1.5, 0.1, 5e-324, 1e-7, 2**31, 2**53, 2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1,
    1e15, 1.7e12, 1e300, -1e300, 1.7976931348623157e308, 300.0, 45.0, 1440.0001, -5,
]
#: number literals the JSON text carries as is (orjson.dumps could not write some of them)
RAW_NUMBERS = [b"18446744073709551616", b"-9223372036854775809", b"1" + b"0" * 40, b"1e400", b"-0", b"1E2",
               b"0.0000000000000000000001", b"1.7e12", b"17000000000000.5"]
REASONS = {"invalid_json", "schema", "missing_id", "missing_field", "unknown_source", "unknown_type", "bad_timestamp",
           "future_timestamp", "too_old", "non_finite", "too_large", "empty", "internal"}


class Fuzzer:
    """Seeded: the same seed gives the same messages, byte for byte."""

    def __init__(self, seed: int, now: int) -> None:
        self.rng = random.Random(seed)
        self.now = now
        self.n = 0
        self.sent: list[bytes] = []

    def text(self) -> str:
        rng = self.rng
        pick = rng.random()
        if pick < 0.5:
            return rng.choice(ODD_TEXT)
        if pick < 0.8:
            return "".join(chr(rng.choice([rng.randint(0x20, 0x7e), rng.randint(0xa0, 0xd7ff), rng.randint(0xe000, 0x10ffff),
                                           rng.randint(0, 0x1f), 0x202e, 0x200f, 0xfeff]))
                           for _ in range(rng.randint(0, 24)))
        return rng.choice(["x", "ab", "ü", "😀"]) * rng.choice([100, 1025, 5000, 40_000])

    def value(self, depth: int = 0) -> Any:
        rng = self.rng
        pick = rng.random()
        if pick < 0.3:
            return rng.choice(EXTREME)
        if pick < 0.55:
            return self.text()
        if pick < 0.65:
            return rng.choice([True, False, None])
        if pick < 0.75:
            return self.nested(rng.choice([2, 10, 64, 120]))
        if depth > 2:
            return None
        if pick < 0.87:
            return [self.value(depth + 1) for _ in range(rng.randint(0, 40))]
        return {self.text(): self.value(depth + 1) for _ in range(rng.randint(0, 8))}

    def nested(self, depth: int) -> Any:
        inner: Any = self.rng.choice(["x", 1, None, "gmail.com"])
        for _ in range(depth):
            inner = [inner] if self.rng.random() < 0.7 else {"k": inner}
        return inner

    def ident(self) -> str:
        rng = self.rng
        if rng.random() < 0.6:
            return f"lead-{rng.randint(0, 400)}"
        return rng.choice(ODD_TEXT) + (f"-{rng.randint(0, 20)}" if rng.random() < 0.5 else "")

    def time(self) -> Any:
        rng = self.rng
        t = self.now - rng.randint(0, 20 * DAY)  # inside the default max_event_age: the odd ones below test it
        pick = rng.random()
        if pick < 0.35:
            return t
        if pick < 0.55:
            return float(t) + rng.choice([0.0, 0.25, 0.999])  # what time.time() * 1000 gives
        if pick < 0.75:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t / 1000))
            return stamp + rng.choice(["Z", "z", "+00:00", ".123456789Z", "+14:00", "-12:00"])
        return rng.choice([
            1.7e12, 1e300, -1.0, 0, 2**63 - 1, 2**64 - 1, self.now + 10 * DAY, "0000-01-01T00:00:00Z",
            "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-23:59", "2026-06-30T23:59:60Z", "2026-02-30T00:00:00Z",
            "1969-12-31T23:59:59Z", "2026-01-01 00:00:00Z", "2026-01-01T00:00:00", "now", True, None, [t], {"ms": t},
        ])

    def event(self, source: str) -> dict[str, Any]:
        rng = self.rng
        self.n += 1
        type_ = rng.choice(TYPES[source])
        event: dict[str, Any] = {"event_id": f"f{self.n}-{rng.randint(0, 10**9)}", "source": source, "type": type_,
                                 "occurred_at": self.time()}
        who = rng.random()
        if source == "profile" or who < 0.75:
            event["lead_id"] = self.ident()
        if who >= 0.6 or type_ == "alias":
            event["anonymous_id"] = f"anon-{rng.randint(0, 300)}" if rng.random() < 0.7 else self.ident()
        props: dict[str, Any] = {}
        if source in ("web", "email"):
            props["url"] = rng.choice(["https://acme.io/pricing", "https://acme.io/compare/x", "https://acme.io/customers/a",
                                       "https://acme.io/" + "a" * 40 + "!", self.text()])
        if source == "webinar":
            props["minutes"] = rng.choice([5, 45, 45.5, 0, 1440]) if rng.random() < 0.8 else rng.choice(EXTREME)
        if props or rng.random() < 0.3:
            event["properties"] = props
        if source == "profile" and type_ == "identify":
            event["traits"] = {
                "email": rng.choice(["kim@acme.io", "x@gmail.com", "@", "a@b@c", self.text()]),
                "seniority": rng.choice(["vp", "director", "intern"]),
                "employees": rng.choice([300, 300.0, 5, 1e300, -1, 2**63 - 1, 100_000_000, 100_000_001]),
                "industry": rng.choice(["software", "student", self.text()]),
            }
        for _ in range(rng.choice([0, 0, 0, 1, 1, 2, 3])):
            self.mutate(event)
        return event

    def mutate(self, event: dict[str, Any]) -> None:
        rng = self.rng
        pick = rng.random()
        if pick < 0.2:
            event.pop(rng.choice(list(event)), None)
        elif pick < 0.4:
            event[rng.choice(["event_id", "lead_id", "anonymous_id", "source", "type", "occurred_at", "properties",
                              "traits"])] = self.value()
        elif pick < 0.55:
            props = event.setdefault("properties", {})
            if isinstance(props, dict):
                props[rng.choice(["url", "title", "minutes", "referrer", "campaign", "x"])] = self.value()
        elif pick < 0.75:
            traits = event.setdefault("traits", {})
            if not isinstance(traits, dict):
                return
            name = rng.choice(["email", "email_domain", "employees", "annual_revenue", "budget", "industry", "seniority",
                               "custom", "tags", self.text()])
            traits[name] = rng.choice([self.value(), self.nested(300), [self.text() for _ in range(rng.randint(0, 40))]])
        elif pick < 0.85:
            event[self.text()] = self.value()  # an unknown top-level field
        else:
            for key in ("lead_id", "anonymous_id", "event_id"):
                if key in event:
                    event[key] = rng.choice(ODD_TEXT)

    def message(self, source: str) -> bytes:
        rng = self.rng
        if self.sent and rng.random() < 0.03:
            return rng.choice(self.sent)  # a redelivery
        event = self.event(source)
        try:
            raw = orjson.dumps(event)
        except TypeError:  # beyond what orjson writes (nesting past 254 levels): the JSON text has it
            raw = json.dumps(event, ensure_ascii=False).encode()
        raw = raw[:150_000]  # too large already (64 KiB), and the test stays quick
        pick = rng.random()
        if pick < 0.03:
            raw = raw[: rng.randint(0, len(raw))]
        elif pick < 0.06:
            raw = raw.replace(b'"occurred_at":', b'"occurred_at":' + rng.choice(RAW_NUMBERS) + b',"was":', 1)
        elif pick < 0.08:
            raw = raw.replace(b'"event_id":"', b'"event_id":"\\ud800', 1)  # an unpaired surrogate escape
        elif pick < 0.09:
            raw = rng.choice([b"\xef\xbb\xbf" + raw, raw + b"\xff", b"", b" ", b"null", b"[]", b"NaN", b"[" * 2000])
        self.sent.append(raw)
        return raw


def metric(text: str, name: str, **labels: str) -> float:
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture
async def worker(broker: TansuBroker, redis_server: RedisServer, redis: Redis, tmp_path: Path) -> AsyncIterator[WorkerProcess]:
    # `redis` empties the database before and after: the thousands of leads made here stay here.
    async with running(WorkerProcess(broker.bootstrap, redis_server.url, tmp_path, partitions=PARTITIONS)) as proc:
        yield proc


async def produce_to(bootstrap: str, items: list[tuple[str, int, bytes | None, bytes]]) -> None:
    """(topic, partition, key, value) in order; a generous request size for the one huge message."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=2 * 1024 * 1024,
                                linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key, partition=partition)
                   for topic, partition, key, value in items]
        for future in futures:
            await future
    finally:
        await producer.stop()


async def test_ten_thousand_near_valid_events_never_stop_the_worker(worker: WorkerProcess, broker: TansuBroker) -> None:
    assert worker.proc is not None
    pid = worker.proc.pid
    now = int(time.time() * 1000)
    fuzzer = Fuzzer(SEED, now)
    items: list[tuple[str, int, bytes | None, bytes]] = []
    for i in range(COUNT):
        source = SOURCES[i % len(SOURCES)]
        raw = fuzzer.message(source)
        key = raw[:40] if i % 7 else None
        items.append((worker.topic(source), (i // len(SOURCES)) % PARTITIONS, key, raw))
    # Just under a producer request (1 MiB): with the dead-letter headers added it no longer fits one.
    huge = b'{"pad": "' + b"x" * 1_048_439 + b'"}'
    assert DefaultRecordBatchBuilder.estimate_size_in_bytes(None, huge, []) <= 1_048_576
    items.append((worker.topic("web"), 0, None, huge))
    sentinels = {}
    for source in SOURCES:
        for partition in range(PARTITIONS):
            lead = f"sentinel-{source}-{partition}"
            sentinel = {"event_id": f"{lead}-e", "lead_id": lead, "source": source, "type": TYPES[source][0],
                        "occurred_at": now, "properties": {"url": "https://acme.io/", "minutes": 45},
                        "traits": {"email": f"{lead}@acme.io", "seniority": "vp"}}
            if source == "profile":
                sentinel["type"] = "identify"
            sentinels[lead] = sentinel
            items.append((worker.topic(source), partition, lead.encode(), orjson.dumps(sentinel)))
    produced = len(items)
    offsets: dict[tuple[str, int], int] = Counter()
    sent_at: dict[tuple[str, int, int], bytes] = {}
    for topic, partition, _, value in items:
        sent_at[(topic, partition, offsets[(topic, partition)])] = value
        offsets[(topic, partition)] += 1
    await produce_to(broker.bootstrap, items)

    async def all_counted() -> bool:
        assert worker.proc is not None and worker.proc.poll() is None, worker.log.read_text(errors="replace")[-3000:]
        status, text = await worker.get("/metrics")
        return status == 200 and metric(text, "leadpulse_events_total") >= produced

    await wait_for(all_counted, 240, f"the worker to count all {produced} messages", interval=1.0)
    _, text = await worker.get("/metrics")
    handled = {outcome: metric(text, "leadpulse_events_total", outcome=outcome)
               for outcome in ("scored", "duplicate", "anonymous", "invalid")}
    assert sum(handled.values()) == produced, handled

    for lead, sentinel in sentinels.items():
        status, body = await worker.get("/leads/" + quote(lead, safe=""))
        assert status == 200, (lead, body)
        assert body["lead_id"] == lead and body["last_event_at"] == iso(now), body

    dlq = worker.settings["dlq_topic"]
    invalid = int(handled["invalid"])

    def origin(record: Any) -> tuple[str, int, int]:
        h = dict(record.headers)
        return h["leadpulse.dlq.topic"].decode(), int(h["leadpulse.dlq.partition"]), int(h["leadpulse.dlq.offset"])

    records = await consume_until(broker.bootstrap, dlq, lambda rs: len({origin(r) for r in rs}) >= invalid, timeout=120)
    letters = {origin(r): r for r in records}
    assert len(letters) == invalid, "every dead-lettered message is on the topic once"
    scored = handled["scored"] + handled["duplicate"] + handled["anonymous"]
    assert scored + len(letters) == produced

    reasons: Counter[str] = Counter()
    for where, record in letters.items():
        headers = dict(record.headers)
        reason = headers["leadpulse.dlq.reason"].decode()
        reasons[reason] += 1
        assert reason in REASONS, reason
        if reason == "internal":
            assert headers["leadpulse.dlq.exception"] and headers["leadpulse.dlq.message"]
        if "leadpulse.dlq.truncated_from" in headers:
            assert int(headers["leadpulse.dlq.truncated_from"]) == len(sent_at[where])
            assert sent_at[where].startswith(record.value)
        else:
            assert record.value == sent_at[where], "the original bytes, unchanged"
    assert metric(text, "leadpulse_dlq_total") == len(letters)
    # The generator reaches past the schema, not only into it: most ways to fail, and plenty scored.
    assert len(reasons) >= 8 and scored >= produced // 5, (reasons, handled)
    assert any("leadpulse.dlq.truncated_from" in dict(r.headers) for r in letters.values())

    assert worker.proc.poll() is None and worker.proc.pid == pid, "the worker never stopped"
    log = worker.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    print(f"\nfuzz: {produced} messages, seed {SEED}: {dict(handled)}; dead letters by reason {dict(reasons)}")


def test_the_generator_is_deterministic() -> None:
    def make() -> list[bytes]:
        fuzzer = Fuzzer(7, 1_790_000_000_000)
        return [fuzzer.message(source) for source in SOURCES * 40]

    assert make() == make()
