"""The service kit the worker, the collector and alerts share: retries, the bounded id memory, the
rebalance listener, the probes, settings and their flags. Pure code, and one real HTTP server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaConnectionError, KafkaError
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, Counter

from leadpulse.bounded import Recent, RecentIds
from leadpulse.cli import main
from leadpulse.events import SOURCES, load_schema
from leadpulse.probes import add_probes
from leadpulse.rebalance import Partitions
from leadpulse.retry import Retry, Stopped
from leadpulse.settings import Settings


def test_the_sources_are_the_contracts() -> None:
    schema = load_schema("event.schema.json")
    assert SOURCES == tuple(schema["$defs"]["envelope"]["properties"]["source"]["enum"])
    assert set(SOURCES) <= set(schema["$defs"])  # each source has its own part of the contract
    assert Settings(topic_prefix="t.").input_topics == {f"t.{s}": s for s in SOURCES}


# --- retry ---------------------------------------------------------------------------------------


async def test_a_retry_backs_off_doubling_to_its_cap_and_reports_each_failure() -> None:
    failures: list[tuple[str, str, float]] = []
    left = [KafkaConnectionError("down")] * 4 + [OSError("refused")]

    async def op() -> str:
        if left:
            raise left.pop(0)
        return "done"

    retry = Retry((KafkaError, OSError), lambda what, exc, delay: failures.append((what, type(exc).__name__, delay)),
                  initial=0.001, maximum=0.004)
    assert await retry(op, "connect") == "done"
    assert [f[2] for f in failures] == [0.001, 0.002, 0.004, 0.004, 0.004]
    assert {f[0] for f in failures} == {"connect"} and failures[-1][1] == "OSError"


async def test_errors_it_does_not_wait_out_propagate_at_once() -> None:
    failures: list[Any] = []
    retry = Retry((KafkaError,), lambda *a: failures.append(a))

    async def refused() -> None:
        raise CommitFailedError("the group moved on")

    async def bug() -> None:
        raise ValueError("not an outage")

    with pytest.raises(CommitFailedError):
        await retry(refused, "commit", fatal=(CommitFailedError,))
    with pytest.raises(ValueError):
        await retry(bug, "process")
    assert failures == []


async def test_a_stop_ends_the_wait_between_tries() -> None:
    stopping = asyncio.Event()

    def failed(what: str, exc: Exception, delay: float) -> None:
        stopping.set()  # the process is asked to stop while the broker is down

    async def down() -> None:
        raise KafkaConnectionError("down")

    retry = Retry((KafkaError,), failed, stopping=stopping, initial=3600)
    with pytest.raises(Stopped):
        await retry(down, "producer_start")


# --- bounded ids -----------------------------------------------------------------------------------


def test_recent_ids_keep_the_newest_writes_within_capacity() -> None:
    ids: RecentIds[str] = RecentIds(3)
    for i in "abcd":
        ids.add(i)
    assert list(ids) == ["b", "c", "d"] and "a" not in ids
    ids.add("b")  # written again: newest
    ids.add("e")
    assert list(ids) == ["d", "b", "e"]
    links: Recent[str, str] = Recent(2)
    links["v1"], links["v2"], links["v3"] = "l1", "l2", "l3"
    assert dict(links) == {"v2": "l2", "v3": "l3"} and links.copy().capacity == 2
    with pytest.raises(ValueError):
        RecentIds(0)


# --- rebalance -------------------------------------------------------------------------------------


async def test_partitions_are_given_up_only_after_the_batch_in_flight() -> None:
    changes: list[int] = []
    gone: list[set[TopicPartition]] = []
    tp0, tp1 = TopicPartition("t", 0), TopicPartition("t", 1)
    partitions = Partitions("test", changed=lambda: changes.append(len(partitions.assigned)), revoked=gone.append)
    await partitions.on_partitions_assigned({tp0, tp1})
    partitions.batch_started()
    revoking = asyncio.ensure_future(partitions.on_partitions_revoked({tp1}))
    for _ in range(5):
        await asyncio.sleep(0)  # let it run as far as it can
    assert not revoking.done() and partitions.handing_over and partitions.assigned == {tp0, tp1}
    partitions.batch_done()
    await revoking
    assert partitions.assigned == {tp0} and gone == [{tp1}] and changes == [2, 1]
    await partitions.on_partitions_assigned({tp0})
    assert not partitions.handing_over


# --- probes ----------------------------------------------------------------------------------------


@pytest.fixture
async def probed() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    state: dict[str, Any] = {"ready": False}
    registry = CollectorRegistry()
    Counter("kit_things", "Things.", registry=registry).inc(3)
    app = web.Application()

    async def readiness() -> dict[str, Any]:
        return {"ready": state["ready"], "why": "testing"}

    add_probes(app.router, readiness, registry, lambda request: request.headers.get("Authorization") == "Bearer ok")
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", state
    await runner.cleanup()


async def test_probes_answer_health_readiness_with_its_checks_and_guarded_metrics(
        probed: tuple[str, dict[str, Any]]) -> None:
    url, state = probed
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/healthz") as resp:
            assert (resp.status, await resp.json()) == (200, {"status": "ok"})
        async with http.get(url + "/readyz") as resp:
            assert (resp.status, await resp.json()) == (503, {"ready": False, "why": "testing"})
        state["ready"] = True
        async with http.get(url + "/readyz") as resp:
            assert resp.status == 200
        async with http.get(url + "/metrics") as resp:
            assert resp.status == 401 and (await resp.json())["code"] == "unauthorized"
        async with http.get(url + "/metrics", headers={"Authorization": "Bearer ok"}) as resp:
            assert resp.status == 200 and "kit_things_total 3.0" in await resp.text()
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")


# --- settings and flags ----------------------------------------------------------------------------


def test_one_masking_and_one_flag_builder_for_every_command(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "API_TOKEN", "REDIS_CLUSTER", "CONFIG"):
        monkeypatch.delenv(f"LEADPULSE_{name}", raising=False)
    shown = Settings(redis_url="redis://user:hunter2@redis:6379/0", api_token="t0ken").masked()  # type: ignore[arg-type]
    assert shown["redis_url"] == "redis://user:***@redis:6379/0" and shown["api_token"] == "***"
    result = CliRunner().invoke(main, ["worker", "--print-config", "--redis-cluster", "--lead-ttl", "30d",
                                       "--redis-url", "redis://:hunter2@r:1/0"])
    assert result.exit_code == 0, result.output
    printed = orjson.loads(result.output)
    assert printed["redis_cluster"] is True and printed["lead_ttl"] == 30 * 86_400_000
    assert "hunter2" not in result.output
    result = CliRunner().invoke(main, ["worker", "--print-config", "--http-port", "0"])
    assert result.exit_code == 2 and "LEADPULSE_HTTP_PORT" in result.output
