"""Every door has a lock: API tokens, a password-protected Redis, secrets kept out of sight,
bounded HTTP input."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from redis.asyncio import Redis

from leadpulse.dev.embedded import RedisServer, TansuBroker
from leadpulse.errors import StateError
from leadpulse.model import ScoringModel
from leadpulse.state import LeadStore

from tests.support.fixtures import T0, event
from tests.support.kafkatools import WorkerProcess, produce, running, wait_for

pytestmark = pytest.mark.integration
PASSWORD = "redis-s3cret-7Hq"
API_TOKEN = "api-token-9Zr"
ADMIN_TOKEN = "admin-token-4Kx"


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("locked"), extra=("--requirepass", PASSWORD))
    server.start()
    yield server  # type: ignore[misc]
    server.stop()


def url(server: RedisServer, password: str | None) -> str:
    auth = f":{password}@" if password else ""
    return f"redis://{auth}127.0.0.1:{server.port}/0"


@pytest.fixture(scope="module")
async def worker(broker: TansuBroker, locked_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[WorkerProcess]:
    async with running(WorkerProcess(
        broker.bootstrap, url(locked_redis, PASSWORD), tmp_path_factory.mktemp("secure"),
        api_token=API_TOKEN, admin_token=ADMIN_TOKEN,
    )) as proc:
        yield proc


async def test_a_password_protected_redis_refuses_us_without_it(locked_redis: RedisServer, model: ScoringModel) -> None:
    for wrong in (None, "not-the-password"):
        client = Redis.from_url(url(locked_redis, wrong))
        with pytest.raises(StateError) as info:
            await LeadStore(client, model).apply([(event("web", "demo_request", T0, lead="pw"), "t:0:0")])
        assert PASSWORD not in str(info.value)
        await client.aclose()
    client = Redis.from_url(url(locked_redis, PASSWORD))
    result = await LeadStore(client, model).apply([(event("web", "demo_request", T0, lead="pw"), "t:0:0")])
    assert result.outcomes == ["scored"]
    await client.aclose()


async def call(worker: WorkerProcess, method: str, path: str, token: str | None = None) -> tuple[int, object]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.request(method, worker.url + path, headers=headers) as resp:
        body = await resp.read()
        return resp.status, orjson.loads(body) if resp.content_type == "application/json" else body.decode()


async def test_reads_need_the_api_token(worker: WorkerProcess) -> None:
    for token in (None, "wrong", ADMIN_TOKEN + "x"):
        status, body = await call(worker, "GET", "/leads/anyone", token)
        assert status == 401 and body["code"] == "unauthorized"  # type: ignore[index]
        status, _ = await call(worker, "GET", "/leads/top?limit=3", token)
        assert status == 401
    status, body = await call(worker, "GET", "/leads/anyone", API_TOKEN)
    assert status == 404 and body["code"] == "unknown_lead"  # type: ignore[index]
    # Health and metrics stay open for probes and Prometheus unless configured otherwise.
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await call(worker, "GET", path))[0] == 200


async def test_erasing_a_lead_needs_the_admin_token(worker: WorkerProcess, broker: TansuBroker) -> None:
    value = orjson.dumps({"event_id": "sec-1", "lead_id": "erase-me", "source": "web", "type": "demo_request",
                          "occurred_at": int(time.time() * 1000)})
    await produce(broker.bootstrap, [(worker.topic("web"), b"erase-me", value)])

    async def scored() -> bool:
        return (await call(worker, "GET", "/leads/erase-me", API_TOKEN))[0] == 200

    await wait_for(scored, 30, "the lead to be scored")
    assert (await call(worker, "DELETE", "/leads/erase-me"))[0] == 401
    assert (await call(worker, "DELETE", "/leads/erase-me", API_TOKEN))[0] == 401
    status, body = await call(worker, "DELETE", "/leads/erase-me", ADMIN_TOKEN)
    assert status == 200 and body == {"deleted": "erase-me"}
    assert (await call(worker, "GET", "/leads/erase-me", API_TOKEN))[0] == 404


async def test_secrets_never_show(worker: WorkerProcess) -> None:
    _, metrics = await call(worker, "GET", "/metrics")
    printed = subprocess.run([sys.executable, "-m", "leadpulse", "worker", "--print-config"], env=worker.env,
                             capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0
    log = Path(worker.log).read_text()
    for secret in (PASSWORD, API_TOKEN, ADMIN_TOKEN):
        assert secret not in str(metrics)
        assert secret not in printed.stdout + printed.stderr
        assert secret not in log
    assert "***" in printed.stdout


async def test_http_input_is_bounded(worker: WorkerProcess) -> None:
    status, body = await call(worker, "GET", "/leads/" + "x" * 300, API_TOKEN)
    assert status == 400 and body["code"] == "bad_lead_id"  # type: ignore[index]
    from leadpulse.api import LEAD_ID

    assert not LEAD_ID.fullmatch("bad\nid") and not LEAD_ID.fullmatch("") and LEAD_ID.fullmatch("a{b}:c d")
    async with aiohttp.ClientSession() as http:
        async with http.get(worker.url + "/healthz", headers={"X-Big": "y" * 20_000}) as resp:
            assert resp.status in (400, 431)


@pytest.mark.slow
async def test_a_worker_with_the_wrong_redis_password_waits_and_says_why(
    broker: TansuBroker, locked_redis: RedisServer, tmp_path: Path,
) -> None:
    proc = WorkerProcess(broker.bootstrap, url(locked_redis, "wrong-pass-xyz"), tmp_path).start()
    try:
        async def up() -> bool:
            try:
                return (await proc.get("/healthz"))[0] == 200
            except aiohttp.ClientError:
                return False

        await wait_for(up, 30, "the worker's web server")
        status, body = await proc.get("/readyz")
        assert status == 503 and body["redis"] is False
        assert proc.proc is not None and proc.proc.poll() is None
        assert "wrong-pass-xyz" not in proc.log.read_text()
    finally:
        proc.stop()


@pytest.mark.slow
async def test_metrics_can_be_locked_too(broker: TansuBroker, locked_redis: RedisServer, tmp_path: Path) -> None:
    worker = WorkerProcess(broker.bootstrap, url(locked_redis, PASSWORD), tmp_path,
                           api_token=API_TOKEN, protect_metrics="true")
    async with running(worker) as proc:
        assert (await call(proc, "GET", "/metrics"))[0] == 401
        assert (await call(proc, "GET", "/metrics", API_TOKEN))[0] == 200


async def raw_http(port: int, request: bytes) -> tuple[int, bytes]:
    """One request as raw bytes (clients refuse to send what a hostile one sends); status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head, _, body = (await reader.read()).partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body
    finally:
        writer.close()


async def test_client_mistakes_get_4xx_and_log_no_traceback(worker: WorkerProcess) -> None:
    logged = worker.log.stat().st_size
    auth = f"Authorization: Bearer {API_TOKEN}\r\n".encode()
    cases = [
        (b"/leads/top?limit=%C2%B2", auth, 400),  # '²'.isdigit() is True, int('²') fails
        (b"/leads/top?limit=" + b"9" * 5000, auth, 400),  # int() refuses more than 4,300 digits
        (b"/leads/top?limit=%FF", auth, 400),
        (b"/leads/top?limit=3", b"Authorization: Bearer \xff\r\n", 401),  # not UTF-8: a wrong token
        (b"/leads/top?limit=3", b"Authorization: Bearer " + API_TOKEN.encode() + b"\xff\r\n", 401),
        (b"/leads/%FF%FE", auth, 404),  # kept as typed: an id like any other, unknown
        (b"/leads/top?limit=3", auth, 200),
    ]
    for target, header, status in cases:
        got, body = await raw_http(worker.port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n" + header
                                   + b"Connection: close\r\n\r\n")
        assert got == status, (target, header, body)
        if status != 200:
            assert orjson.loads(body)["code"] in ("bad_limit", "unauthorized", "unknown_lead")
    with worker.log.open("rb") as log:
        log.seek(logged)
        text = log.read().decode(errors="replace")
    assert "Traceback" not in text and " ERROR " not in text, text


async def test_an_undecodable_request_is_a_400_not_a_500_with_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    # The worker API's safety net, on a real aiohttp server: any handler that meets a byte a client
    # sent that is not text (here: a header with \xff, held by aiohttp as a lone surrogate).
    from aiohttp import web

    from leadpulse.api import client_errors

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=request.headers.get("X-Name", "").encode())

    app = web.Application(middlewares=[client_errors])
    app.router.add_get("/echo", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        assert (await raw_http(port, b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Name: kim\r\nConnection: close\r\n\r\n")) == (200, b"kim")
        status, body = await raw_http(port, b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Name: k\xffm\r\nConnection: close\r\n\r\n")
        assert (status, orjson.loads(body)["code"]) == (400, "bad_encoding")
    finally:
        await runner.cleanup()
    assert not [r for r in caplog.records if r.levelno >= 40 or r.exc_info]
