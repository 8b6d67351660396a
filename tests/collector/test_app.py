"""The collector against real services: a Tansu broker, real HTTP, the real Segment client
library (segment-analytics-python), and a real worker for the end-to-end score. No mocks."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from segment.analytics import Client

from leadpulse.collector.app import Collector
from leadpulse.collector.command import collector
from leadpulse.collector.config import CollectorSettings, load_collector_settings
from leadpulse.dev.embedded import RedisServer, TansuBroker, free_port
from leadpulse.errors import ConfigError
from leadpulse.settings import Settings

from tests.support.kafkatools import WorkerProcess, committed_all, consume_until, wait_for

KEY = "wk_test_site"
SOURCES = ("web", "email", "webinar", "profile", "crm")


# --- settings (no services needed) ----------------------------------------------------------


def test_settings_come_from_flags_then_env_then_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "leadpulse.yaml"
    config.write_text("collector:\n  write_keys: [file-a, file-b]\n  collector_port: 7001\n"
                      "  track_events: {Trial Started: web/form_submit, Email Opened: null}\n")
    s = load_collector_settings(config)
    assert [k.key.get_secret_value() for k in s.write_keys] == ["file-a", "file-b"] and s.collector_port == 7001
    assert s.event_map["trial started"] == ("web", "form_submit") and "email opened" not in s.event_map
    monkeypatch.setenv("LEADPULSE_WRITE_KEYS", "env-a, env-b,")
    monkeypatch.setenv("LEADPULSE_CONFIG", str(config))
    s = load_collector_settings(collector_port=7002)
    assert [k.key.get_secret_value() for k in s.write_keys] == ["env-a", "env-b"] and s.collector_port == 7002
    monkeypatch.setenv("LEADPULSE_TRACK_EVENTS", '{"Demo Requested": "crm/won"}')
    assert load_collector_settings().event_map["demo requested"] == ("crm", "won")


def test_bad_collector_settings_are_one_line_and_exit_code_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEADPULSE_WRITE_KEYS", raising=False)
    monkeypatch.delenv("LEADPULSE_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="no write key"):
        load_collector_settings()
    with pytest.raises(ConfigError, match="LEADPULSE_TRACK_EVENTS"):
        load_collector_settings(write_keys="k", track_events='{"X": "web/fax"}')
    typo = tmp_path / "typo.yaml"
    typo.write_text("collector:\n  write_key: k\n")
    with pytest.raises(ConfigError, match="unknown key collector.write_key"):
        load_collector_settings(typo)
    result = CliRunner().invoke(collector, ["--collector-port", "99999", "--write-keys", "k"])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "LEADPULSE_COLLECTOR_PORT" in result.output
    result = CliRunner().invoke(collector, ["--print-config", "--write-keys", "secret-1,secret-2"])
    assert result.exit_code == 0 and "secret-1" not in result.output
    assert orjson.loads(result.output)["write_keys"] == [{"key": "***", "name": "key1"}, {"key": "***", "name": "key2"}]


# --- a collector in this process, on a free port --------------------------------------------


@pytest.fixture
async def start_collector(broker: TansuBroker) -> AsyncIterator[Callable[..., Awaitable[Collector]]]:
    started: list[Collector] = []

    async def start(bootstrap: str | None = None, prefix: str | None = None, **config: Any) -> Collector:
        settings = Settings(kafka_bootstrap=bootstrap or broker.bootstrap, partitions=2,
                            topic_prefix=prefix or f"c{uuid.uuid4().hex[:8]}.")
        c = Collector(settings, CollectorSettings(**{"write_keys": KEY, "collector_port": 0, **config}))
        await c.start()
        started.append(c)
        return c

    yield start
    for c in started:
        await c.stop()


async def ready(c: Collector, timeout: float = 30.0) -> Collector:
    deadline = time.monotonic() + timeout
    while not c.sink.ready:
        assert time.monotonic() < deadline, c.sink.problem
        await asyncio.sleep(0.05)
    return c


async def post(c: Collector, path: str, body: Any, headers: dict[str, str] | None = None,
               method: str = "POST") -> tuple[int, Any, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with aiohttp.ClientSession(auto_decompress=False) as http, http.request(
            method, c.url + path, data=data, headers=headers or {}) as resp:
        raw = await resp.read()
        parsed = orjson.loads(raw) if resp.content_type == "application/json" else raw
        return resp.status, parsed, resp.headers


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


async def metric(c: Collector, name: str, **labels: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(c.url + "/metrics") as resp:
        text = await resp.text()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


async def records_by_topic(c: Collector, want: int, timeout: float = 30.0) -> dict[str, list[Any]]:
    prefix, bootstrap = c.settings.topic_prefix, c.settings.kafka_bootstrap
    out: dict[str, list[Any]] = {}
    deadline = time.monotonic() + timeout
    while sum(len(v) for v in out.values()) < want and time.monotonic() < deadline:
        for source in SOURCES:
            out[source] = await consume_until(bootstrap, prefix + source, lambda rs: False, timeout=0.5)
    return out


def segment_client(c: Collector, **options: Any) -> Client:
    errors: list[Any] = []
    client = Client(KEY, host=c.url, on_error=lambda e, batch: errors.append((e, batch)), upload_interval=0.05,
                    **options)
    client.errors = errors  # type: ignore[attr-defined]
    return client


# --- the tests ---------------------------------------------------------------------------------

@pytest.mark.integration
async def test_the_segment_python_library_reaches_the_topics(start_collector: Callable[..., Awaitable[Collector]]) -> None:
    c = await ready(await start_collector())
    client = segment_client(c, gzip=True)  # gzip, Basic auth and writeKey in the body: as it ships
    sent = [
        client.identify("u-1", {"email": "kim@acme.io", "title": "VP Sales", "employees": 300}, anonymous_id="anon-1")[1],
        client.track("u-1", "Demo Requested", {"url": "https://acme.io/demo"})[1],
        client.page("u-1", name="Pricing", properties={"url": "https://acme.io/pricing"})[1],
        client.group("u-1", "g-1", {"name": "Acme", "industry": "software"})[1],
        client.alias("anon-2", "u-1")[1],
        client.track(anonymous_id="anon-1", event="Email Link Clicked", properties={"link_url": "https://acme.io/b"})[1],
        client.track("u-1", "Button Clicked")[1],  # not in the event map: ignored
    ]
    await asyncio.to_thread(client.flush)
    client.join()
    assert client.errors == []  # type: ignore[attr-defined]
    topics = await records_by_topic(c, 6)
    events = {orjson.loads(r.value)["event_id"]: (source, r.key, orjson.loads(r.value))
              for source, records in topics.items() for r in records}
    ids = [m["messageId"] for m in sent]
    assert set(events) == set(ids[:6])  # each messageId is the event_id: client retries dedupe
    identify, demo, page, group, alias, click = (events[i] for i in ids[:6])
    assert identify[0] == "profile" and identify[1] == b"u-1"
    assert identify[2]["anonymous_id"] == "anon-1" and identify[2]["traits"]["job_title"] == "VP Sales"
    assert demo[:2] == ("web", b"u-1") and demo[2]["type"] == "demo_request"
    assert page[2]["type"] == "page_view" and page[2]["properties"]["url"] == "https://acme.io/pricing"
    assert group[2]["traits"] == {"company": "Acme", "industry": "software"}
    assert (alias[2]["type"], alias[2]["anonymous_id"]) == ("alias", "anon-2")
    assert click[:2] == ("email", b"anon-1") and click[2]["properties"]["url"] == "https://acme.io/b"
    assert await metric(c, "leadpulse_collector_requests_total", path="/v1/batch", code="200") >= 1
    assert await metric(c, "leadpulse_collector_events_total", source="web", type="demo_request") == 1
    assert await metric(c, "leadpulse_collector_skipped_total", reason="unmapped_event") == 1


@pytest.mark.integration
async def test_browser_paths_text_plain_write_key_in_body_and_cors(start_collector: Callable[..., Awaitable[Collector]]) -> None:
    c = await ready(await start_collector(collector_cors_origins="https://acme.io"))
    origin = {"Origin": "https://acme.io", "Content-Type": "text/plain"}
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    calls = {
        "/v1/t": {"event": "Form Submitted", "userId": "b-1"},
        "/v1/p": {"anonymousId": "anon-b", "context": {"page": {"url": "https://acme.io/pricing"}}},
        "/v1/i": {"userId": "b-1", "anonymousId": "anon-b", "traits": {"email": "b@acme.io"}},
        "/v1/g": {"userId": "b-1", "groupId": "g", "traits": {"name": "Acme"}},
        "/v1/a": {"userId": "b-1", "previousId": "anon-c"},
        "/v1/track": {"event": "Email Opened", "userId": "b-1"},
    }
    for path, msg in calls.items():
        body = {**msg, "messageId": f"msg{path.replace('/', '-')}", "timestamp": now, "sentAt": now, "writeKey": KEY}
        status, answer, headers = await post(c, path, body, origin)
        assert (status, answer["accepted"]) == (200, 1), (path, answer)
        assert headers["Access-Control-Allow-Origin"] == "https://acme.io"
        assert "X-RateLimit-Reset" in headers["Access-Control-Expose-Headers"]
    # analytics.js batching: /b (and /v1/b) with the write key in the body, no Authorization
    batch = {"writeKey": KEY, "sentAt": now, "batch": [{"type": "track", "event": "Content Downloaded",
                                                        "userId": "b-1", "messageId": "msg-b", "timestamp": now}]}
    for path in ("/b", "/v1/b"):
        status, answer, _ = await post(c, path, batch, origin)
        assert status == 200 and answer["accepted"] == 1
    status, _, headers = await post(c, "/v1/t", b"", {"Origin": "https://acme.io",
                                                       "Access-Control-Request-Method": "POST",
                                                       "Access-Control-Request-Headers": "content-type"}, "OPTIONS")
    assert status == 204 and headers["Access-Control-Allow-Origin"] == "https://acme.io"
    assert "POST" in headers["Access-Control-Allow-Methods"] and headers["Access-Control-Allow-Headers"] == "content-type"
    status, _, headers = await post(c, "/v1/t", b"", {"Origin": "https://evil.example"}, "OPTIONS")
    assert "Access-Control-Allow-Origin" not in headers
    topics = await records_by_topic(c, 8)
    ids = {orjson.loads(r.value)["event_id"] for records in topics.values() for r in records}
    assert ids == {"msg-v1-t", "msg-v1-p", "msg-v1-i", "msg-v1-g", "msg-v1-a", "msg-v1-track", "msg-b"}


@pytest.mark.integration
async def test_write_keys_limits_and_malformed_requests_get_json_errors(start_collector: Callable[..., Awaitable[Collector]]) -> None:
    c = await ready(await start_collector())
    good = {"type": "track", "event": "Demo Requested", "userId": "e-1", "messageId": "e-1"}

    async def check(path: str, body: Any, headers: dict[str, str], status: int, code: str) -> None:
        got, answer, _ = await post(c, path, body, headers)
        assert (got, answer["code"]) == (status, code), answer
        assert isinstance(answer["message"], str) and answer["message"]

    await check("/v1/batch", {"batch": [good], "writeKey": "nope"}, {}, 401, "unauthorized")
    await check("/v1/batch", {"batch": [good]}, {}, 401, "unauthorized")
    await check("/v1/batch", {"batch": [good], "writeKey": KEY}, basic("nope"), 401, "unauthorized")
    await check("/v1/t", {**good, "writeKey": KEY[:-1]}, {}, 401, "unauthorized")
    await check("/v1/batch", b'{"batch": [', basic(KEY), 400, "invalid_json")
    await check("/v1/batch", {"batch": "x"}, basic(KEY), 400, "invalid_body")
    await check("/v1/batch", b"[1]", basic(KEY), 400, "invalid_body")
    big = {**good, "properties": {"blob": "x" * 33_000}}
    await check("/v1/t", {**big, "writeKey": KEY}, {}, 413, "too_large")
    batch = {"batch": [{**good, "properties": {"blob": "x" * 30_000}} for _ in range(18)]}  # ~540 KB
    await check("/v1/batch", batch, basic(KEY), 413, "too_large")
    bomb = gzip.compress(b'{"batch": [' + b" " * 20_000_000 + b"]}")  # 20 MB that packs into ~20 KB
    assert len(bomb) < 100_000
    await check("/v1/batch", bomb, {**basic(KEY), "Content-Encoding": "gzip"}, 413, "too_large")
    await check("/v1/batch", b"\x1f\x8b not gzip", {**basic(KEY), "Content-Encoding": "gzip"}, 400, "invalid_encoding")
    await check("/v1/batch", b"{}", {**basic(KEY), "Content-Encoding": "br"}, 415, "unsupported_encoding")
    await check("/v1/t", {"event": "Demo Requested", "writeKey": KEY}, {}, 400, "missing_id")
    assert await metric(c, "leadpulse_collector_events_total") == 0  # none of that produced anything

    # A batch keeps its good messages and says which were skipped, and why.
    status, answer, _ = await post(c, "/v1/batch", gzip.compress(orjson.dumps({"batch": [
        good, {"type": "track", "event": "Demo Requested", "messageId": "no-id"},
        {"type": "track", "event": "Newsletter Viewed", "userId": "e-1", "messageId": "ign"}]})),
        {**basic(KEY), "Content-Encoding": "gzip"})
    assert status == 200 and answer["accepted"] == 1
    assert answer["skipped"]["count"] == 2
    assert answer["skipped"]["reasons"] == {"missing_id": 1, "unmapped_event": 1}
    assert [(s["index"], s["messageId"], s["reason"], s["ignored"]) for s in answer["skipped"]["examples"]] == [
        (1, "no-id", "missing_id", False), (2, "ign", "unmapped_event", True)]
    assert await metric(c, "leadpulse_collector_requests_total", path="/v1/batch", code="413") == 2
    assert await metric(c, "leadpulse_collector_requests_total", path="/v1/batch", code="401") == 3
    status, answer, _ = await post(c, "/v1/batch", {}, method="GET")
    assert status == 405 and answer["code"] == "method_not_allowed"


@pytest.mark.integration
@pytest.mark.slow
async def test_503_while_the_broker_is_down_and_the_client_retries_until_it_is_up(
        start_collector: Callable[..., Awaitable[Collector]], tmp_path: Path) -> None:
    port = free_port()
    c = await start_collector(bootstrap=f"127.0.0.1:{port}", collector_produce_timeout=3)
    body = {"batch": [{"type": "track", "event": "Demo Requested", "userId": "d-1", "messageId": "d-0"}]}
    status, answer, headers = await post(c, "/v1/batch", body, basic(KEY))
    assert (status, answer["code"]) == (503, "unavailable") and headers["Retry-After"].isdigit()
    async with aiohttp.ClientSession() as http, http.get(c.url + "/readyz") as resp:
        assert resp.status == 503

    client = segment_client(c)
    msg = client.track("d-1", "Demo Requested", {"url": "https://acme.io/demo"})[1]
    flushed = asyncio.ensure_future(asyncio.to_thread(client.flush))
    deadline = time.monotonic() + 30
    while await metric(c, "leadpulse_collector_requests_total", code="503") < 2:  # the client got a 503 too
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    broker = TansuBroker(tmp_path, port=port)
    broker.start()
    try:
        await asyncio.wait_for(flushed, 120)  # the client kept the batch and retried
        client.join()
        assert client.errors == []  # type: ignore[attr-defined]
        records = await consume_until(broker.bootstrap, c.settings.topic_prefix + "web", lambda rs: len(rs) >= 1)
        assert [orjson.loads(r.value)["event_id"] for r in records] == [msg["messageId"]]

        broker.stop()  # and when it goes away again: 503, not a hang, not a 200
        status, answer, _ = await post(c, "/v1/batch", body, basic(KEY))
        assert (status, answer["code"]) == (503, "unavailable")
    finally:
        broker.stop()


@pytest.mark.integration
@pytest.mark.slow
async def test_end_to_end_from_the_segment_client_to_a_score(
        broker: TansuBroker, redis_server: RedisServer, tmp_path: Path,
        start_collector: Callable[..., Awaitable[Collector]]) -> None:
    worker = WorkerProcess(broker.bootstrap, redis_server.url, tmp_path).start()
    try:
        await worker.wait_ready()
        c = await ready(await start_collector(prefix=worker.settings["topic_prefix"]))
        user, visitor = f"lead-{uuid.uuid4().hex[:6]}", f"anon-{uuid.uuid4().hex[:6]}"
        client = segment_client(c, gzip=True)
        client.page(anonymous_id=visitor, name="Pricing", properties={"url": "https://acme.io/pricing"})
        client.identify(user, {"email": f"{user}@acme.io", "title": "VP Marketing", "seniority": "vp",
                               "company": {"name": "Acme", "employee_count": 300, "industry": "software"}},
                        anonymous_id=visitor)
        client.track(user, "Demo Requested", {"url": "https://acme.io/demo"})
        for _ in range(2):  # a client retry: the same messageId twice
            client.track(user, "Email Link Clicked", {"link_url": "https://acme.io/blog"}, message_id="click-1")
        await asyncio.to_thread(client.flush)
        client.join()
        assert client.errors == []  # type: ignore[attr-defined]

        deadline = time.monotonic() + 60
        while True:
            status, lead = await worker.get(f"/leads/{user}")
            rules = {r["rule_id"]: r["points"] for r in lead.get("contributions", [])} if status == 200 else {}
            if {"demo_request", "pricing_page", "email_click"} <= set(rules) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert status == 200, lead
        # the anonymous pricing visit merged into the lead through identify's anonymousId
        assert rules["demo_request"] == pytest.approx(50, abs=0.1)
        assert rules["pricing_page"] == pytest.approx(25, abs=0.1)
        assert rules["email_click"] == pytest.approx(5, abs=0.1)  # counted once
        assert lead["fit_grade"] == "A" and lead["stage"] in ("mql", "sql")
        assert lead["score"] >= 80

        async def all_committed() -> bool:
            topics = [worker.topic(s) for s in SOURCES]
            return await committed_all(worker.settings["kafka_bootstrap"], worker.settings["group_id"], topics)

        # Everything the collector sent handled (a dead letter is counted before its offset is
        # committed): only then does a zero below mean none.
        await wait_for(all_committed, 60, "the worker to commit everything the collector sent")
        _, metrics_text = await worker.get("/metrics")
        dlq = [s.value for f in text_string_to_metric_families(metrics_text) for s in f.samples
               if s.name == "leadpulse_dlq_total"]
        assert sum(dlq) == 0  # the worker dead-lettered nothing the collector sent
    finally:
        worker.stop()


@pytest.mark.integration
async def test_the_collector_command_serves_and_stops_cleanly_on_sigterm(broker: TansuBroker, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "leadpulse.yaml"
    config.write_text(f"collector:\n  write_keys: [{KEY}]\n  collector_port: {port}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADPULSE_")}
    env.update(LEADPULSE_KAFKA_BOOTSTRAP=broker.bootstrap, LEADPULSE_TOPIC_PREFIX=f"cmd{uuid.uuid4().hex[:6]}.",
               LEADPULSE_PARTITIONS="2", LEADPULSE_CONFIG=str(config))
    log = (tmp_path / "collector.log").open("wb")
    # The command object as cli.py registers it (`leadpulse collector`).
    proc = subprocess.Popen([sys.executable, "-c", "from leadpulse.collector.command import collector; collector()"],  # noqa: ASYNC220
                            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while True:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "collector.log").read_text()
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.2)
            body = {"batch": [{"type": "track", "event": "Demo Requested", "userId": "cmd-1", "messageId": "cmd-1"}]}
            async with http.post(f"http://127.0.0.1:{port}/v1/batch", data=orjson.dumps(body), headers=basic(KEY)) as resp:
                assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
