"""Poison isolation as pure logic: the bisection, the retry-or-split decision on Redis errors, and
the pipeline moving exactly the failing records to the dead letters. A fake store and producer
stand in here; tests/test_fuzz.py proves the same through the real worker, Redis and broker."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from redis import exceptions as rx

from leadpulse import events as contract
from leadpulse.errors import InternalFailure, RedisRefused, StateError
from leadpulse.events import Event
from leadpulse.explanation import Explanation
from leadpulse.isolate import bisect
from leadpulse.metrics import Metrics
from leadpulse.model import ScoringModel
from leadpulse.pipeline import Processor, Topics
from leadpulse.redisconn import unavailable
from leadpulse.state import SCORED, BatchResult, Transition

NOW = 1_790_000_000_000


# --- the bisection ---------------------------------------------------------------------------------


def run_over(bad: set[int], calls: list[tuple[int, int]]) -> Any:
    async def run(start: int, end: int) -> list[int]:
        calls.append((start, end))
        if bad & set(range(start, end)):
            raise ValueError(f"bad in {start}..{end}")
        return list(range(start, end))

    return run


@pytest.mark.parametrize("seed", range(30))
def test_bisect_finds_exactly_the_failing_records_and_runs_the_rest_once_in_order(seed: int) -> None:
    rng = random.Random(seed)
    count = rng.randint(1, 300)
    bad = set(rng.sample(range(count), rng.randint(1, min(count, 6))))
    calls: list[tuple[int, int]] = []
    split = asyncio.run(bisect(count, run_over(bad, calls), ValueError("the whole batch")))
    assert set(split.culprits) == bad
    done = [i for _, _, result in split.parts for i in result]
    assert done == sorted(set(range(count)) - bad), "every other record once, in batch order"
    starts = [start for start, _, _ in split.parts]
    assert starts == sorted(starts)
    # log-many calls per culprit, never one per record
    assert len(calls) <= 2 * len(bad) * max(1, count.bit_length()) + 1


def test_bisect_of_a_single_record_blames_it_without_running_it_again() -> None:
    calls: list[tuple[int, int]] = []
    failure = ValueError("alone")
    split = asyncio.run(bisect(1, run_over({0}, calls), failure))
    assert split.culprits == {0: failure} and not calls and not split.parts


def test_a_batch_that_fails_only_whole_goes_through_in_parts_with_no_culprit() -> None:
    async def run(start: int, end: int) -> int:
        if end - start > 4:
            raise ValueError("too big together")
        return end - start

    split = asyncio.run(bisect(16, run, ValueError("too big together")))
    assert not split.culprits and sum(n for _, _, n in split.parts) == 16


def test_a_transient_failure_while_splitting_is_raised_for_the_caller_to_retry_the_batch() -> None:
    async def run(start: int, end: int) -> None:
        raise StateError("redis: connection lost")

    with pytest.raises(StateError):
        asyncio.run(bisect(8, run, ValueError("first")))


# --- retry or split ------------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [
    rx.ConnectionError("Connection closed by server."), rx.TimeoutError("Timeout reading from socket"),
    rx.BusyLoadingError("Redis is loading the dataset in memory"), rx.OutOfMemoryError("command not allowed"),
    rx.ReadOnlyError("You can't write against a read only replica."), rx.TryAgainError("Multiple keys request"),
    rx.ClusterDownError("The cluster is down"), rx.MovedError("3999 127.0.0.1:6381"),
    rx.ResponseError("BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE."),
    rx.ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist"),
    rx.ResponseError("NOREPLICAS Not enough good replicas to write."),
    rx.ResponseError("ERR Error running script (call to f_1): @user_script:9: -OOM command not allowed "),
    rx.AuthenticationError("invalid username-password pair"), rx.NoPermissionError("this user has no permissions"),
    rx.RedisClusterException("Redis Cluster cannot be connected. Please provide at least one reachable node"),
])
def test_errors_that_mean_not_now_are_retried(error: Exception) -> None:
    assert unavailable(error)


@pytest.mark.parametrize("error", [
    rx.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value script: 1a2b, on @user_script:40."),
    rx.ResponseError("ERR user_script:12: Script attempted to access nonexistent global variable 'x' script: 1a2b"),
    rx.ResponseError("ERR Error running script (call to f_1): @user_script:3: user_script:3: bad argument #1"),
    rx.ClusterCrossSlotError("Keys in request don't hash to the same slot"),
    rx.RedisClusterException("EVALSHA - all keys must map to the same key slot"),
    rx.DataError("Invalid input of type: 'dict'. Convert to a bytes, string, int or float first."),
])
def test_errors_a_retry_would_not_change_split_the_batch(error: Exception) -> None:
    assert not unavailable(error)


# --- the pipeline --------------------------------------------------------------------------------------


@dataclass
class FakeRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = NOW  # the broker stamps a record when it arrives: events are judged by that


class FakeStore:
    """Refuses any batch holding a poisoned lead, as Redis refuses a script call for it."""

    def __init__(self, model: ScoringModel, poisoned: set[str], transitions: dict[str, Transition] | None = None,
                 transient: int = 0) -> None:
        self.model = model
        self.poisoned = poisoned
        self.transitions = transitions or {}
        self.transient = transient
        self.calls = 0

    async def apply(self, batch: Sequence[tuple[Event, str]], now: int | None = None) -> BatchResult:
        self.calls += 1
        if self.transient:
            self.transient -= 1
            raise StateError("redis: Connection reset by peer")
        if any(e.lead_id in self.poisoned for e, _ in batch):
            raise RedisRefused("redis: WRONGTYPE Operation against a key holding the wrong kind of value")
        found = [self.transitions[e.event_id] for e, _ in batch if e.event_id in self.transitions]
        return BatchResult([SCORED] * len(batch), found)


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, dict[str, bytes]]] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None,
                   headers: list[tuple[str, bytes]] | None = None) -> Any:
        self.sent.append((topic, value, key, dict(headers or [])))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def records(leads: list[str]) -> list[FakeRecord]:
    return [FakeRecord("events.email", 0, i, lead.encode(), orjson.dumps({
        "event_id": f"e{i}", "lead_id": lead, "source": "email", "type": "click", "occurred_at": NOW - 1000,
        "properties": {"url": "https://x.io"}})) for i, lead in enumerate(leads)]


def processor(store: FakeStore, producer: FakeProducer) -> Processor:
    return Processor(store, producer, Topics("leads.handoff", "events.dlq"), Metrics())  # type: ignore[arg-type]


def dead_letters(producer: FakeProducer) -> dict[int, dict[str, bytes]]:
    return {int(h["leadpulse.dlq.offset"]): h for topic, _, _, h in producer.sent if topic == "events.dlq"}


def test_the_records_of_a_refused_lead_are_dead_lettered_as_internal_and_the_rest_applied(model: ScoringModel) -> None:
    leads = ["a", "poison", "b", "c", "poison", "d", "e", "other-poison"]
    store, producer = FakeStore(model, {"poison", "other-poison"}), FakeProducer()
    proc = processor(store, producer)

    async def go() -> Any:
        batch = proc.prepare(records(leads))
        await proc.apply(batch)
        await proc.publish(batch)
        return batch

    batch = asyncio.run(go())
    assert [e.lead_id for e, _ in batch.valid] == ["a", "b", "c", "d", "e"]
    assert [r.offset for r in batch.origins] == [0, 2, 3, 5, 6]
    assert batch.result is not None and batch.result.outcomes == [SCORED] * 5
    letters = dead_letters(producer)
    assert set(letters) == {1, 4, 7}
    for headers in letters.values():
        assert headers["leadpulse.dlq.reason"] == b"internal"
        assert headers["leadpulse.dlq.exception"] == b"leadpulse.errors.RedisRefused"
        assert b"WRONGTYPE" in headers["leadpulse.dlq.message"]
    assert store.calls < len(leads) * 2


def test_a_transient_failure_is_raised_for_a_retry_not_split(model: ScoringModel) -> None:
    store, producer = FakeStore(model, set(), transient=1), FakeProducer()
    proc = processor(store, producer)

    async def go() -> Any:
        batch = proc.prepare(records(["a", "b"]))
        with pytest.raises(StateError):
            await proc.apply(batch)
        await proc.apply(batch)  # what the worker's retry does
        return batch

    batch = asyncio.run(go())
    assert len(batch.valid) == 2 and not batch.invalid and store.calls == 2


def test_a_record_whose_parsing_fails_unexpectedly_is_dead_lettered_alone(model: ScoringModel,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    real = contract.parse

    def parse(raw: bytes, *args: Any) -> Event:
        if b'"lead_id":"odd"' in raw:
            raise AttributeError("'float' object has no attribute 'replace'")
        return real(raw, *args)

    monkeypatch.setattr(contract, "parse", parse)
    producer = FakeProducer()
    proc = processor(FakeStore(model, set()), producer)
    batch = proc.prepare(records(["a", "odd", "b"]))
    assert [e.lead_id for e, _ in batch.valid] == ["a", "b"]
    (record, error), = batch.invalid
    assert record.offset == 1 and isinstance(error, InternalFailure) and error.exception == "AttributeError"


def test_a_handoff_that_cannot_be_built_dead_letters_the_event_that_caused_it(model: ScoringModel) -> None:
    # A stage index the model does not have: building the handoff fails for this transition only.
    bad = Transition("b", 1, "promoted", 0, 99, NOW - 1000, "e1", 110.0, Explanation(120.0, {}, 0.0, "D", ()))
    store, producer = FakeStore(model, set(), {"e1": bad}), FakeProducer()
    proc = processor(store, producer)

    async def go() -> Any:
        batch = proc.prepare(records(["a", "b", "c"]))
        await proc.apply(batch)
        await proc.publish(batch)
        await proc.publish(batch)  # a retry of the publish: built once, the same record blamed once
        return batch

    batch = asyncio.run(go())
    assert [e.lead_id for e, _ in batch.valid] == ["a", "c"] and len(batch.invalid) == 1
    assert batch.result is not None and len(batch.result.outcomes) == 2
    letters = dead_letters(producer)
    assert set(letters) == {1} and letters[1]["leadpulse.dlq.exception"] == b"IndexError"
