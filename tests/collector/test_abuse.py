"""The collector under abuse, against a real broker over real HTTP: slow clients, connection
floods, huge batches, hostile bytes, and per-key rate limits (with the real Segment client)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from leadpulse.collector.app import Collector

from tests.support.kafkatools import wait_for
from .test_app import KEY, basic, metric, post, ready, records_by_topic, segment_client, start_collector

__all__ = ["start_collector"]  # the fixture, shared with test_app.py
pytestmark = pytest.mark.integration
Start = Callable[..., Awaitable[Collector]]


def track(mid: str, user: str = "ab-1", **extra: Any) -> dict[str, Any]:
    return {"type": "track", "event": "Demo Requested", "userId": user, "messageId": mid, **extra}


async def trickle(port: int, data: bytes, first: bytes = b"", pace: float = 0.1) -> tuple[int, bytes]:
    """Send `first` at once, then `data` a byte at a time, `pace` s apart, reading all along; stop
    when the server answers or closes. Returns how many bytes of `data` were sent by then (-1:
    all, and the server never closed) and what it answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = b""
    sent = 0
    writer.write(first)
    try:
        for sent in range(len(data)):
            writer.write(data[sent:sent + 1])
            await writer.drain()
            try:
                chunk = await asyncio.wait_for(reader.read(4096), pace)
            except TimeoutError:
                continue
            answer += chunk
            if not chunk:
                return sent + 1, answer
            with contextlib.suppress(TimeoutError):  # an answer: read to its end (a kept-alive connection has none)
                answer += await asyncio.wait_for(reader.read(), 10)
            return sent + 1, answer
    except ConnectionError:
        return sent + 1, answer
    finally:
        writer.close()
    return -1, answer


async def test_clients_trickling_their_headers_are_cut_off(start_collector: Start) -> None:
    c = await start_collector(collector_header_timeout=1)
    request = b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 400 + b"\r\n\r\n"
    results = await asyncio.gather(*[trickle(c.port, request) for _ in range(10)])
    for sent, answer in results:
        assert 0 < sent < len(request) and answer == b"", (sent, answer)  # closed before the headers ended
    await wait_for(lambda: _true(c.cap is not None and c.cap.open == 0), 30, "the connections to be gone")


async def _true(value: bool) -> bool:
    return value


@pytest.mark.slow
async def test_a_client_trickling_its_body_gets_408_and_is_closed(start_collector: Start) -> None:
    c = await ready(await start_collector(collector_body_timeout=1))
    body = orjson.dumps({"batch": [track("slow-1")]}) + b" " * 400
    head = (b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: " + basic(KEY)["Authorization"].encode()
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    sent, answer = await trickle(c.port, body, first=head)  # the headers at once: only the body is slow
    assert 0 < sent < len(body), sent
    assert answer.startswith(b"HTTP/1.1 408 ") and b'"code":"timeout"' in answer and b"Connection: close" in answer
    assert await metric(c, "leadpulse_collector_events_total") == 0


async def test_connections_past_the_cap_get_503_at_once_and_service_resumes(start_collector: Start) -> None:
    c = await ready(await start_collector(collector_max_connections=3, collector_header_timeout=120))
    idle = [await asyncio.open_connection("127.0.0.1", c.port) for _ in range(3)]
    await wait_for(lambda: _true(c.cap is not None and c.cap.open == 3), 30, "three open connections")
    status, answer, headers = await post(c, "/v1/batch", {"batch": [track("cap-1")]}, basic(KEY))
    assert (status, answer["code"], headers["Retry-After"]) == (503, "busy", "2")
    for _, writer in idle:
        writer.close()
    await wait_for(lambda: _true(c.cap is not None and c.cap.open == 0), 30, "the idle connections to be gone")
    status, answer, _ = await post(c, "/v1/batch", {"batch": [track("cap-2")]}, basic(KEY))
    assert (status, answer["accepted"]) == (200, 1)
    assert await metric(c, "leadpulse_collector_connections_refused_total") == 1


async def test_batches_are_capped_in_messages_and_skipped_ones_are_summarised(start_collector: Start) -> None:
    c = await ready(await start_collector())
    status, answer, _ = await post(c, "/v1/batch", {"batch": [track(f"m-{i}") for i in range(2501)]}, basic(KEY))
    assert (status, answer["code"]) == (413, "too_many_messages")
    # The probe's body: 170,000 empty messages in 568 bytes of gzip. It got a 22 MB answer.
    bomb = gzip.compress(b'{"batch": [' + b",".join([b"{}"] * 170_000) + b"]}", 9)
    assert len(bomb) < 1000
    status, answer, _ = await post(c, "/v1/batch", bomb, {**basic(KEY), "Content-Encoding": "gzip"})
    assert (status, answer["code"]) == (413, "too_many_messages")
    async with aiohttp.ClientSession() as http, http.post(
            c.url + "/v1/batch", data=orjson.dumps({"batch": [{}] * 2000 + [track("kept")]}), headers=basic(KEY)) as resp:
        raw = await resp.read()
    answer = orjson.loads(raw)
    assert resp.status == 200 and answer["accepted"] == 1 and len(raw) < 2000
    assert answer["skipped"]["count"] == 2000 and answer["skipped"]["reasons"] == {"missing_field": 2000}
    assert [e["index"] for e in answer["skipped"]["examples"]] == [0, 1, 2, 3, 4]
    assert await metric(c, "leadpulse_collector_skipped_total", reason="missing_field") == 2000


async def test_an_oversized_message_is_skipped_and_the_rest_of_its_batch_produced(start_collector: Start) -> None:
    c = await ready(await start_collector())
    big = track("big", properties={"blob": "x" * 33_000})
    status, answer, _ = await post(c, "/v1/batch", {"batch": [track("small-a"), big, track("small-b")]}, basic(KEY))
    assert (status, answer["accepted"]) == (200, 2)
    (example,) = answer["skipped"]["examples"]
    assert (example["index"], example["messageId"], example["reason"]) == (1, "big", "too_large")
    topics = await records_by_topic(c, 2)
    assert sorted(orjson.loads(r.value)["event_id"] for r in topics["web"]) == ["small-a", "small-b"]


async def test_hostile_bytes_get_4xx_and_no_traceback(start_collector: Start, caplog: pytest.LogCaptureFixture) -> None:
    c = await ready(await start_collector())
    caplog.set_level(logging.INFO)
    body = orjson.dumps({"batch": [track("hb-1")]})

    async def raw(auth: bytes, extra: bytes = b"") -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", c.port)
        writer.write(b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + extra + b"Authorization: " + auth
                     + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
        answer = await reader.read()
        writer.close()
        return answer

    for auth in (b"Basic \xff\xfe", b"Basic " + base64.b64encode(b"\xff" + KEY.encode() + b":"), b"Basic \xc3\xa9t\xc3\xa9"):
        assert (await raw(auth)).startswith(b"HTTP/1.1 401 "), auth
    answer = await raw(basic(KEY)["Authorization"].encode(), b"Origin: https://a\xffb\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and b"Access-Control-Allow-Origin" not in answer  # not echoed
    deep: Any = "x"
    for _ in range(300):  # orjson writes 254 levels at most: this one failed as a 500 before
        deep = [deep]
    # (json, not orjson, writes the test's bodies: orjson cannot)
    status, answer, _ = await post(c, "/v1/batch", json.dumps({"batch": [track("hb-2"), track("hb-3", properties={"d": deep})]})
                                   .encode(), basic(KEY))
    assert (status, answer["accepted"], answer["skipped"]["reasons"]) == (200, 1, {"too_deep": 1})
    status, answer, _ = await post(c, "/v1/t", json.dumps({**track("hb-4", properties={"d": deep}), "writeKey": KEY}).encode())
    assert (status, answer["code"]) == (400, "too_deep")
    status, answer, _ = await post(c, "/v1/batch", {"batch": [track("hb-5")], "writeKey": [[["x"]]]})
    assert (status, answer["code"]) == (401, "unauthorized")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.text


async def test_the_rate_limit_counts_events_per_key_and_answers_429_with_retry_after(start_collector: Start) -> None:
    other = "wk_other_site"
    c = await ready(await start_collector(write_keys=[
        {"key": KEY, "name": "site", "rate_limit": 0.01, "rate_burst": 10}, {"key": other, "rate_limit": 0.01, "rate_burst": 10}]))
    status, answer, _ = await post(c, "/v1/batch", {"batch": [track(f"rl-{i}") for i in range(10)]}, basic(KEY))
    assert (status, answer["accepted"]) == (200, 10)  # the burst
    status, answer, headers = await post(c, "/v1/batch", {"batch": [track("rl-10")]}, basic(KEY))
    assert (status, answer["code"]) == (429, "rate_limited") and int(headers["Retry-After"]) >= 60
    assert headers["X-RateLimit-Reset"] == headers["Retry-After"]  # what analytics.js reads
    status, answer, _ = await post(c, "/v1/t", {**track("rl-11"), "writeKey": KEY})
    assert status == 429  # single events count too
    status, answer, _ = await post(c, "/v1/batch", {"batch": [track("rl-o")]}, basic(other))
    assert status == 200  # per key
    assert await metric(c, "leadpulse_collector_rate_limited_total", key="site") == 2


@pytest.mark.slow
async def test_the_segment_client_keeps_a_rate_limited_batch_and_delivers_it_later(start_collector: Start) -> None:
    # 0.2 events/s: after the burst, the next event waits ~5 s, which the client must sit out.
    c = await ready(await start_collector(write_keys=[{"key": KEY, "rate_limit": 0.2, "rate_burst": 3}]))
    status, _, _ = await post(c, "/v1/batch", {"batch": [track(f"seg-{i}") for i in range(3)]}, basic(KEY))
    assert status == 200
    client = segment_client(c)
    msg = client.track("ab-1", "Demo Requested", {"url": "https://acme.io/demo"})[1]
    await asyncio.to_thread(client.flush)
    client.join()
    assert client.errors == []  # type: ignore[attr-defined]
    assert await metric(c, "leadpulse_collector_requests_total", code="429") >= 1
    topics = await records_by_topic(c, 4)
    assert msg["messageId"] in {orjson.loads(r.value)["event_id"] for r in topics["web"]}
