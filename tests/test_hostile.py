"""Hostile input never stops the worker: each message is scored correctly or dead-lettered
with the reason the contract gives, and counted."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leadpulse import events as contract
from leadpulse.embedded import RedisServer, TansuBroker
from leadpulse.errors import InvalidEvent

from .kafkatools import WorkerProcess, running, consume_until, produce, wait_for

pytestmark = pytest.mark.integration
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
