"""The sales board in a real browser: headless Chromium (the system's, driven by Playwright)
against real workers, a real Tansu broker and a real redis-server.

The browser is on a board-only worker whose input topics stay empty, so everything live it
shows came through the handoff topic from the worker that scored it: a board served by any
worker shows every partition's handoffs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest

from leadpulse.dev.embedded import RedisServer, TansuBroker
from leadpulse.handoff import iso

from tests.support.kafkatools import WorkerProcess, emptied, produce, running

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # two workers and a headless Chromium: ~17 s to start

TOKEN = "board-token-Zq9"
HOSTILE_TITLE = "<script>window.__pwned = 1</script>VP Sales"
HOSTILE_ID = '"><img src=x onerror="window.__pwned = 2">'
#: LEADPULSE_BOARD_SHOTS=docs writes the README's screenshots there
SHOTS = os.environ.get("LEADPULSE_BOARD_SHOTS")


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("chromium is not installed: scripts/ensure-services installs it (apt-get install chromium)")
    return found


@pytest.fixture(scope="module")
async def workers(broker: TansuBroker, redis_server: RedisServer,
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[WorkerProcess, WorkerProcess]]:
    logs = tmp_path_factory.mktemp("board")
    # the hot list this module checks is its own
    scorer = WorkerProcess(broker.bootstrap, await emptied(redis_server.url), logs, api_token=TOKEN)
    board = WorkerProcess(broker.bootstrap, redis_server.url, logs, api_token=TOKEN,
                          handoff_topic=scorer.settings["handoff_topic"], topic_prefix=f"idle{scorer.tag}.")
    async with running(scorer), running(board):
        yield scorer, board


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        # the system's Chromium (no browser download); root in CI needs --no-sandbox
        launched = await pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        yield launched
        await launched.close()


def journey(lead: str, traits: dict[str, Any], steps: list[tuple[str, str, dict[str, Any]]], start: int) -> list[dict[str, Any]]:
    out = [{"event_id": f"{lead}-id", "lead_id": lead, "source": "profile", "type": "identify", "occurred_at": start,
            "traits": traits}]
    for i, (source, type_, extra) in enumerate(steps, 1):
        out.append({"event_id": f"{lead}-{i}", "lead_id": lead, "source": source, "type": type_,
                    "occurred_at": start + i * 60_000, **extra})
    return out


HOT_STEPS = [("email", "click", {"properties": {"url": "https://acme.io/blog"}}),
             ("webinar", "attended", {"properties": {"minutes": 45}}),
             ("web", "page_view", {"properties": {"url": "https://acme.io/pricing"}}),
             ("web", "page_view", {"properties": {"url": "https://acme.io/compare/hubspot"}}),
             ("web", "demo_request", {})]


async def send(worker: WorkerProcess, events: list[dict[str, Any]]) -> None:
    await produce(worker.settings["kafka_bootstrap"],
                  [(worker.topic(e["source"]), e["lead_id"].encode(), orjson.dumps(e)) for e in events])


async def send_in_order(worker: WorkerProcess, events: list[dict[str, Any]]) -> None:
    """One event at a time, each once the worker has scored the one before (its latest event time
    is that event's): a lead's log then reads in time order, as real traffic mostly does; sent
    together, events of different topics are scored in whatever order the topics are read."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        for event in events:
            await send(worker, [event])
            url = f"{worker.url}/leads/{quote(event['lead_id'], safe='')}"
            deadline = time.monotonic() + 60
            while True:
                async with http.get(url) as resp:
                    if resp.status == 200 and (await resp.json())["last_event_at"] == iso(event["occurred_at"]):
                        break
                assert time.monotonic() < deadline, f"{event['event_id']} not scored within 60 s"
                await asyncio.sleep(0.05)


async def signed_in(browser: Any, worker: WorkerProcess, width: int = 1280, height: int = 860) -> Any:
    context = await browser.new_context(viewport={"width": width, "height": height},
                                        device_scale_factor=2 if width < 600 else 1)
    page = await context.new_page()
    await page.goto(worker.url + "/board")
    await page.fill("#token", TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_url(worker.url + "/board")
    return page


async def test_sign_in_once_with_the_token_then_a_strict_session_cookie(workers: tuple[WorkerProcess, WorkerProcess],
                                                                        browser: Any) -> None:
    _, board = workers
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(board.url + "/board")
    assert page.url == board.url + "/board/signin"
    await page.fill("#token", "not-the-token")
    await page.click("button[type=submit]")
    await page.get_by_role("alert").wait_for()
    assert await context.cookies() == []
    await page.fill("#token", TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_url(board.url + "/board")
    await page.get_by_role("heading", name="Hot now").wait_for()
    (cookie,) = await context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and TOKEN not in cookie["value"]
    assert not cookie["secure"]  # plain HTTP here; Secure when served over HTTPS
    assert await page.evaluate("document.cookie") == ""  # no script can read it
    # the page's own JSON with the cookie; the JSON API keeps its bearer token
    assert await page.evaluate("fetch('/board/hot.json').then(r => r.status)") == 200
    async with aiohttp.ClientSession() as http:
        async with http.get(board.url + "/board/hot.json") as resp:
            assert resp.status == 401
        async with http.get(board.url + "/board/hot.json", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 200
        async with http.get(board.url + "/leads/top", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 200
        async with http.get(board.url + "/board/leads/x", allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/board/signin"
    await page.click("text=Sign out")
    await page.wait_for_url(board.url + "/board/signin")
    assert await context.cookies() == []
    await context.close()


#: realistic leads: who they are as an identify carries it (name, job_title, company: the default
#: who-traits Redis keeps, who.py), Ada with too little known for a fit grade (U)
PEOPLE = [
    ("maria.lopez@northwind.io", {"name": "María López", "job_title": "VP Marketing", "company": "Northwind Traders",
                                  "seniority": "vp", "employees": 420, "industry": "software"},
     HOT_STEPS),
    ("ken.tanaka@globex.com", {"name": "Ken Tanaka", "job_title": "Director of Revenue Operations",
                               "company": "Globex Corporation", "seniority": "director", "employees": 1200,
                               "industry": "fintech"},
     [("web", "page_view", {"properties": {"url": "https://acme.io/pricing"}}), ("web", "demo_request", {}),
      ("email", "click", {"properties": {"url": "https://acme.io/case"}})]),
    ("ada.obi@initech.co", {"name": "Ada Obi", "job_title": "Growth Lead", "company": "Initech"},
     [("webinar", "attended", {"properties": {"minutes": 50}}), ("web", "page_view", {"properties": {"url": "https://acme.io/pricing"}}),
      ("email", "click", {"properties": {"url": "https://acme.io/x"}}), ("web", "content_download", {})]),
]


async def test_screenshots_on_a_laptop_and_a_phone(workers: tuple[WorkerProcess, WorkerProcess], browser: Any,
                                                   tmp_path: Path) -> None:
    scorer, board = workers
    now = int(time.time() * 1000)
    for i, (lead, traits, steps) in enumerate(PEOPLE):
        await send_in_order(scorer, journey(lead, traits, steps, now - (3 - i) * 3_600_000))
    out = Path(SHOTS) if SHOTS else tmp_path
    for name, (width, height) in {"laptop": (1280, 860), "phone": (390, 844)}.items():
        page = await signed_in(browser, board, width, height)
        for _, traits, _ in PEOPLE:
            card = page.locator("#hot .card", has_text=traits["name"])
            await card.wait_for(timeout=60_000)
            # who the person is, from the identify's traits; how much of the fit data is known
            sub = await card.locator(".sub").inner_text()
            assert f"{traits['job_title']} · {traits['company']}" in sub
            assert (await card.locator(".data").inner_text()).startswith("data ")
        ada = page.locator("#hot .card", has_text="Ada Obi")
        assert await ada.locator(".grade").inner_text() == "U"
        assert "unknown, not bad" in await ada.locator(".grade").get_attribute("title")
        assert await ada.locator(".data").inner_text() == "data 11 %"  # job_title: 1 of the 9 fit traits
        await page.locator("#live[data-state=live]").wait_for()
        await page.screenshot(path=str(out / f"board-{name}.png"), full_page=name == "laptop")
        await page.click(f"#hot .card >> text={PEOPLE[0][1]['name']}")
        await page.locator("svg.chart").wait_for()
        assert await page.locator("h1").inner_text() == "María López"
        assert await page.locator(".lead-head .role").inner_text() == "VP Marketing · Northwind Traders"
        assert await page.locator(".lead-head .data").inner_text() == "data 44 %"  # 4 of the 9 fit traits
        await page.screenshot(path=str(out / f"board-lead-{name}.png"), full_page=True)
        await page.context.close()
    for shot in out.glob("board-*.png"):
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


async def test_a_new_hot_lead_appears_live_and_hostile_text_stays_text(workers: tuple[WorkerProcess, WorkerProcess],
                                                                         browser: Any) -> None:
    from playwright.async_api import expect  # imported where used, as the browser fixture does

    scorer, board = workers
    page = await signed_in(browser, board)
    errors: list[str] = []  # a CSP violation or a script error shows here
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.locator("#live[data-state=live]").wait_for()
    await page.evaluate("window.__stay = 'no reload'")
    now = int(time.time() * 1000)
    traits = {"email": "x@acme.io", "seniority": "vp", "employees": 300, "industry": "software", "job_title": HOSTILE_TITLE}
    await send(scorer, journey(HOSTILE_ID, traits, HOT_STEPS, now - 10 * 60_000))

    card = page.locator("#hot .card", has_text=HOSTILE_ID)
    await card.wait_for(timeout=60_000)
    assert await page.evaluate("window.__stay") == "no reload"
    await expect(card).to_contain_text(HOSTILE_TITLE, use_inner_text=True, timeout=60_000)  # the trait, as text
    # The card may first show the lead at MQL (its topics' events can land in different batches,
    # and the list refreshes on every handoff): expect() waits for SQL, not a first look.
    await expect(card.locator(".pill")).to_have_text("SQL", timeout=60_000)
    await expect(card.locator(".signals")).to_contain_text("requested a demo", timeout=60_000)
    await page.locator("#feed li", has_text=HOSTILE_ID).first.wait_for(timeout=30_000)
    assert await page.evaluate("window.__pwned") is None
    assert await page.locator("main img, main script").count() == 0

    # its page: the chart, each event's points, the move, the hostile text still text
    response = await page.goto(board.url + await card.locator(".name a").get_attribute("href"))
    assert response is not None and "script-src 'self'" in response.headers["content-security-policy"]
    await page.locator("svg.chart").wait_for()
    assert await page.locator("svg.chart circle").count() >= 4
    timeline = await page.locator(".timeline").inner_text()
    assert "requested a demo +50" in timeline and "Promoted" in timeline and "SQL" in timeline
    assert HOSTILE_ID in await page.locator("h1").inner_text()
    assert HOSTILE_TITLE in await page.locator(".lead-head .role").inner_text()
    assert await page.evaluate("window.__pwned") is None
    assert await page.locator("main img, main script").count() == 0
    assert errors == []
    await page.context.close()


async def test_client_mistakes_get_4xx_pages_not_tracebacks(workers: tuple[WorkerProcess, WorkerProcess]) -> None:
    _, board = workers
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(board.url + "/board", cookies={"leadpulse_board": "forged.cookie.value"},
                            allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/board/signin"
        async with http.post(board.url + "/board/signin", data=b"", allow_redirects=False) as resp:
            assert resp.status == 401 and "not the one" in await resp.text()
        async with http.post(board.url + "/board/signin", data={"token": TOKEN}, allow_redirects=False) as resp:
            assert resp.status == 303
        async with http.get(board.url + "/board/leads/%FF") as resp:
            assert resp.status == 404  # aiohttp decodes it to U+FFFD: a lead id nobody has
        async with http.get(board.url + "/board/leads/nobody-at-all") as resp:
            assert resp.status == 404 and "nobody-at-all" in await resp.text()
            assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
        async with http.get(board.url + "/board/leads/" + "x" * 300) as resp:
            assert resp.status == 400
        async with http.get(board.url + "/board/static/..%2F..%2Fapi.py") as resp:
            assert resp.status == 404
        async with http.get(board.url + "/board/static/board.js") as resp:
            assert resp.status == 200 and resp.content_type == "text/javascript"
            assert "innerHTML" not in (await resp.text()).replace("never innerHTML", "")
        async with http.get(board.url + "/board/hot.json?limit=%C2%B2") as resp:
            assert resp.status == 200  # not a limit: the default
