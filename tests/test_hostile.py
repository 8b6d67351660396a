"""Hostile input never stops the worker: each message is scored correctly or dead-lettered
with the reason the contract gives, and counted."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from leadpulse import events as contract
from leadpulse import kafka
from leadpulse.admin import rescore
from leadpulse.dev.embedded import RedisServer, TansuBroker
from leadpulse.errors import InvalidEvent, StateError
from leadpulse.isolate import retriable
from leadpulse.keys import Keys
from leadpulse.model import ScoringModel
from leadpulse.settings import Settings
from leadpulse.state import LeadStore

from tests.support.fixtures import event as fixture_event
from tests.support.kafkatools import WorkerProcess, committed_all, consume_until, produce, running, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SKEW = 300_000
MAX_AGE = 30 * 86_400_000  # the default model's max_event_age


@pytest.fixture(scope="module")
async def worker(broker: TansuBroker, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[WorkerProcess]:
    async with running(WorkerProcess(broker.bootstrap, redis_server.url, tmp_path_factory.mktemp("hostile"))) as proc:
        yield proc


_ids = itertools.count()


def base(**fields: Any) -> dict[str, Any]:
    event = {"event_id": f"h-{time.time_ns()}-{next(_ids)}", "lead_id": "hostile", "source": "email", "type": "click",
             "occurred_at": int(time.time() * 1000) - 1000, "properties": {"url": "https://x.io"}}
    event.update(fields)
    return event


def hand_picked() -> list[bytes]:
    now = int(time.time() * 1000)
    deep = b'{"a":' * 3000 + b"1" + b"}" * 3000
    return [
        b"", b"{", b"null", b"[]", b'"just a string"', b"\xff\xfe\x00garbage",
        orjson.dumps(base(event_id=7)), orjson.dumps(base(lead_id=["a"])), orjson.dumps(base(occurred_at=True)),
        orjson.dumps({k: v for k, v in base().items() if k != "event_id"}),
        orjson.dumps({k: v for k, v in base().items() if k != "lead_id"}),
        orjson.dumps(base(properties={"url": "u", "pad": "x" * 200_000})),
        b'{"event_id": "n1", "lead_id": "l", "source": "webinar", "type": "attended", "occurred_at": 1, "properties": {"minutes": NaN}}',
        b'{"event_id": "n2", "lead_id": "l", "source": "webinar", "type": "attended", "occurred_at": 1, "properties": {"minutes": Infinity}}',
        orjson.dumps(base(occurred_at=now + 10 * 365 * 86_400_000)),
        orjson.dumps(base(occurred_at="1969-07-20T20:17:00Z")),
        orjson.dumps(base(lead_id="{braces}")), orjson.dumps(base(lead_id="a:b:c")),
        orjson.dumps(base(lead_id="with spaces  here")), orjson.dumps(base(lead_id="x" * 10_000)),
        orjson.dumps(base(lead_id="名前-😀-ünï")), orjson.dumps(base(lead_id="tab\there")),
        b'{"event_id": "dup", "lead_id": "first", "lead_id": "second-dup", "source": "email", "type": "open", "occurred_at": 5}',
        deep,
        orjson.dumps(base(properties={"url": "u", "nested": {"a": [{"b": [1, 2, {"c": None}]}]}})),
    ]


def expected(raw: bytes, now: int) -> str:
    """What the contract says about a message: 'scored' or the dead-letter reason."""
    try:
        contract.parse(raw, now, SKEW, max_age_ms=MAX_AGE)
    except InvalidEvent as exc:
        return exc.reason
    return "scored"


async def run_round(worker: WorkerProcess, broker: TansuBroker, messages: list[bytes]) -> None:
    tag = f"r{time.monotonic_ns()}"
    keyed = [(f"{tag}-{i}".encode(), raw) for i, raw in enumerate(messages)]
    sentinel_lead = f"{tag}-sentinel"
    sentinel = orjson.dumps(base(event_id=f"{tag}-s", lead_id=sentinel_lead))
    now = int(time.time() * 1000)
    want = {key: expected(raw, now) for key, raw in keyed}
    await produce(broker.bootstrap, [(worker.topic("email"), k, v) for k, v in keyed] + [(worker.topic("email"), b"s", sentinel)])

    async def sentinel_scored() -> bool:
        status, _ = await worker.get(f"/leads/{sentinel_lead}")
        return status == 200

    await wait_for(sentinel_scored, 60, "the worker to get past the hostile messages")

    async def all_committed() -> bool:
        # The sentinel's partition may be done before the others: every outcome is final only
        # once every offset is committed (scored in Redis, dead letters acknowledged).
        topics = [worker.topic(s) for s in ("web", "email", "webinar", "profile", "crm")]
        return await committed_all(broker.bootstrap, worker.settings["group_id"], topics)

    await wait_for(all_committed, 60, "the worker to commit every hostile message")
    invalid = {k: r for k, r in want.items() if r != "scored"}
    records = await consume_until(broker.bootstrap, worker.settings["dlq_topic"],
                                  lambda rs: sum(r.key in invalid for r in rs) >= len(invalid), timeout=30)
    got = {r.key: dict(r.headers)["leadpulse.dlq.reason"].decode() for r in records if r.key in want}
    assert got == invalid
    for r in records:
        if r.key in invalid:
            assert r.value == dict(keyed)[r.key], "the original bytes are kept"
    for key, outcome in want.items():
        if outcome == "scored":
            lead = orjson.loads(dict(keyed)[key])["lead_id"]
            status, _ = await worker.get("/leads/" + _quote(lead))
            assert status == 200, lead
    assert worker.proc is not None and worker.proc.poll() is None


def _quote(lead: str) -> str:
    from urllib.parse import quote

    return quote(lead, safe="")


async def test_hand_picked_hostile_messages(worker: WorkerProcess, broker: TansuBroker) -> None:
    await run_round(worker, broker, hand_picked())


TEXT = st.text(st.characters(codec="utf-8"), min_size=0, max_size=12)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=8,
)
EVENTS = st.fixed_dictionaries(
    {"event_id": TEXT, "lead_id": st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)},
    optional={
        "source": st.sampled_from(["web", "email", "webinar", "profile", "crm", "fax", ""]),
        "type": st.sampled_from(["page_view", "click", "attended", "identify", "won", "open", "nope"]),
        "occurred_at": st.integers(-10, 2**53) | st.sampled_from(["2026-01-01T00:00:00Z", "2026-13-01T00:00:00Z", ""]),
        "properties": st.dictionaries(st.sampled_from(["url", "minutes", "title", "x"]), JSONISH, max_size=3),
        "traits": st.dictionaries(st.sampled_from(["email", "employees", "industry", "y"]), JSONISH, max_size=3),
        "extra": JSONISH,
    },
)
MESSAGES = st.lists(EVENTS.map(orjson.dumps) | st.binary(max_size=64), min_size=20, max_size=60)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(messages=MESSAGES)
def test_generated_messages(worker: WorkerProcess, broker: TansuBroker, messages: list[bytes]) -> None:
    asyncio.run(run_round(worker, broker, messages))


async def test_a_lead_redis_refuses_is_dead_lettered_alone_and_its_batch_goes_on(
        worker: WorkerProcess, broker: TansuBroker, redis_server: RedisServer) -> None:
    """A Lua runtime error for one lead (its dedup set is a string; its state of a format no
    script reads) is deterministic: the batch is split, that lead's events go to the dead-letter
    topic as `internal` with the exception, every other event of the batch is scored, the offsets
    move past them, and the worker never stops."""
    tag = f"p{time.monotonic_ns()}"
    keys = Keys()
    wrong_type, bad_state = f"{tag}-wrongtype", f"{tag}-badstate"
    client = Redis.from_url(redis_server.url)
    await client.set(keys.lead(wrong_type).dedup, b"not a sorted set")
    await client.set(keys.lead(bad_state).state, msgpack.packb([99]))
    try:
        await _refused_lead_round(worker, broker, tag, wrong_type, bad_state)
    finally:
        await client.delete(*keys.lead(wrong_type), *keys.lead(bad_state))
        await client.aclose()


async def _refused_lead_round(worker: WorkerProcess, broker: TansuBroker, tag: str, wrong_type: str, bad_state: str) -> None:
    good = [f"{tag}-good-{i}" for i in range(12)]
    leads = [*good[:4], wrong_type, *good[4:8], bad_state, *good[8:], wrong_type]
    topic = worker.topic("email")
    messages = [(topic, b"one-key", orjson.dumps(base(event_id=f"{tag}-{i}", lead_id=lead)))
                for i, lead in enumerate(leads)]  # one key: one partition, most likely one batch
    await produce(broker.bootstrap, messages)

    async def all_good_scored() -> bool:
        return all([(await worker.get("/leads/" + lead))[0] == 200 for lead in good])

    await wait_for(all_good_scored, 60, "the events of the other leads to be scored")
    poisoned = {value for _, _, value in messages if orjson.loads(value)["lead_id"] in (wrong_type, bad_state)}
    records = await consume_until(broker.bootstrap, worker.settings["dlq_topic"],
                                  lambda rs: {r.value for r in rs} >= poisoned, timeout=60)
    letters = {r.value: dict(r.headers) for r in records if r.value in poisoned}
    assert set(letters) == poisoned
    for value, headers in letters.items():
        assert headers["leadpulse.dlq.reason"] == b"internal"
        assert headers["leadpulse.dlq.exception"] == b"leadpulse.errors.RedisRefused"
        lead = orjson.loads(value)["lead_id"]
        assert (b"WRONGTYPE" if lead == wrong_type else b"unknown format") in headers["leadpulse.dlq.message"]

    async def committed() -> bool:
        return await committed_all(broker.bootstrap, worker.settings["group_id"], [topic])

    await wait_for(committed, 60, "the offsets to be committed past the poisoned events")
    assert worker.proc is not None and worker.proc.poll() is None
    assert "Traceback" not in worker.log.read_text(errors="replace")


async def test_rescore_skips_what_it_cannot_apply_and_counts_it_by_reason(
        broker: TansuBroker, redis_server: RedisServer, model: ScoringModel) -> None:
    tag = f"rs{time.monotonic_ns()}"
    settings = Settings(kafka_bootstrap=broker.bootstrap, redis_url=redis_server.url, topic_prefix=f"{tag}.",
                        partitions=1, group_id=tag)
    await kafka.ensure_topics(settings, list(settings.input_topics))
    poisoned = f"{tag}-poisoned"
    good = [orjson.dumps(base(event_id=f"{tag}-{i}", lead_id=f"{tag}-good-{i}")) for i in range(6)]
    bad = [b"{not json", orjson.dumps(base(event_id=f"{tag}-s", occurred_at=True)),
           orjson.dumps(base(event_id=f"{tag}-p1", lead_id=poisoned)), orjson.dumps(base(event_id=f"{tag}-p2", lead_id=poisoned))]
    await produce(broker.bootstrap, [(f"{tag}.email", None, value) for value in [*good[:3], *bad, *good[3:]]])
    # The group's workers had consumed all of it: rescore rebuilds what the group committed.
    await commit_to_end(broker.bootstrap, tag, f"{tag}.email")
    client = Redis.from_url(redis_server.url)
    space = Keys().in_space(Keys().new_space(int(await client.get("lp:space-seq") or 0) + 1))  # the one it builds
    await client.set(space.lead(poisoned).dedup, b"not a sorted set")
    try:
        result = await rescore(settings, model)
        assert result.space == space.space
        assert all([await client.exists(space.lead(f"{tag}-good-{i}").state) for i in range(len(good))])
    finally:
        await client.delete(*space.lead(poisoned))
        await delete_spaces(client)
        await client.aclose()
    # The events Redis took before it refused the poisoned lead's are duplicates when the parts
    # of the batch are applied again (as in any replay): applied either way, once.
    assert result.events == len(good) + len(bad) and result.scored + result.duplicates == len(good)
    assert result.invalid == len(bad) and result.skipped == {"invalid_json": 1, "schema": 1, "internal": 2}
    assert result.transitions == 0


async def commit_to_end(bootstrap: str, group: str, topic: str) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await kafka.partitions(consumer, [topic])
        ends = await kafka.high_watermarks(consumer, tps)
        await consumer.commit({tp: end for tp, end in ends.items()})
    finally:
        await consumer.stop()


async def delete_spaces(client: Redis) -> None:
    """Back to the shared Redis's first key space: other tests use it."""
    from leadpulse import spaces

    pointer = await client.get("lp:space")
    if pointer:
        await spaces.delete(client, Keys().in_space(pointer.decode()))
    await client.delete("lp:space", "lp:spaces")


async def test_a_redis_out_of_memory_is_retried_never_blamed_on_the_events(
        model: ScoringModel, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The line between "split the batch" and "retry it": a full Redis refuses every write,
    and dead-lettering the batch for it would lose good events. It must stay a StateError."""
    server = RedisServer(tmp_path_factory.mktemp("oom"), appendonly=False,
                         extra=("--maxmemory", "2mb", "--maxmemory-policy", "noeviction"))
    server.start()
    client = Redis.from_url(server.url)
    try:
        store = LeadStore(client, model)
        now = int(time.time() * 1000)
        await store.apply([(fixture_event("web", "page_view", now - 1000, lead="before", url="u"), "t:0:0")], now)
        with pytest.raises(OutOfMemoryError):
            for i in range(10_000):
                await client.set(f"fill-{i}", b"x" * 1000)
        batch = [(fixture_event("web", "page_view", now - 1000, lead=f"full-{i}", url="u"), f"t:0:{i + 1}") for i in range(20)]
        with pytest.raises(StateError) as info:
            await store.apply(batch, now)
        assert isinstance(info.value.__cause__, OutOfMemoryError) and retriable(info.value)
    finally:
        await client.aclose()
        server.stop()
