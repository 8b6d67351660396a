"""Reads of many leads beside one whose stored state is corrupt (LeadStore.read/top/view, GET
/leads/top, GET /leads/{id}): the unreadable lead is skipped, counted and logged, the others are
read; asked for alone, it gets a clear error. Real Redis, a real broker and a real worker process."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result
from redis.asyncio import Redis

from leadpulse.cli import main
from leadpulse.dev.embedded import RedisServer, TansuBroker
from leadpulse.errors import LeadUnreadable
from leadpulse.model import ScoringModel
from leadpulse.state import LeadStore, Skipped

from tests.support.fixtures import T0
from tests.support.kafkatools import WorkerProcess, running, wait_for
from tests.test_sweeper import CORRUPT, own_redis, promoted_then_acknowledged  # noqa: F401 (a fixture)
from tests.test_worker import metric_value

pytestmark = pytest.mark.integration


async def test_a_read_of_many_skips_the_unreadable_lead_and_a_view_of_it_raises_a_clear_error(
        redis: Redis, model: ScoringModel) -> None:
    store = LeadStore(redis, model)
    await promoted_then_acknowledged(store, ["ok-1", "bad", "ok-2"], T0)
    before = {v.lead_id: v.explanation.score for v in await store.read([(lead, T0) for lead in ("ok-1", "ok-2")])
              if v is not None}
    await redis.set(store.keys.lead("bad").state, CORRUPT)
    told: list[Skipped] = []
    store.on_skip = lambda lead, reason, exc: told.append((lead, reason, exc))

    skipped: list[Skipped] = []
    views = await store.read([("ok-1", T0), ("bad", T0), ("missing", T0), ("ok-2", T0)], skipped)
    assert [v.lead_id if v else None for v in views] == ["ok-1", None, None, "ok-2"]
    assert {v.lead_id: v.explanation.score for v in views if v} == before  # read as before the corruption
    assert [(lead, reason) for lead, reason, _ in skipped] == [("bad", "script_error")]
    assert told == []  # the caller took them

    assert {v.lead_id for v in await store.top(10, T0)} == {"ok-1", "ok-2"}
    assert [(lead, reason) for lead, reason, _ in told] == [("bad", "script_error")]  # no caller's list: on_skip
    with pytest.raises(LeadUnreadable, match="'bad' cannot be read \\(script_error"):
        await store.view("bad", T0)
    assert len(told) == 1  # the view raised: nothing skipped
    assert (await store.view("ok-1", T0)) is not None
    assert await store.view("missing", T0) is None


async def test_the_cli_lists_the_other_leads_and_says_which_lead_cannot_be_read(
        redis: Redis, redis_server: RedisServer, model: ScoringModel) -> None:
    store = LeadStore(redis, model)
    await promoted_then_acknowledged(store, ["ok-1", "bad", "ok-2"], int(time.time() * 1000))
    await redis.set(store.keys.lead("bad").state, CORRUPT)

    def cli(*args: str) -> Result:
        return CliRunner().invoke(main, [*args, "--redis-url", redis_server.url])

    result = await asyncio.to_thread(cli, "top", "--json")
    assert result.exit_code == 0, result.output
    assert {lead["lead_id"] for lead in orjson.loads(result.stdout)} == {"ok-1", "ok-2"}
    result = await asyncio.to_thread(cli, "score", "bad")
    assert (result.exit_code, type(result.exception)) == (1, SystemExit), result.output  # a clean exit, no traceback
    assert "'bad' cannot be read (script_error" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.slow
async def test_the_api_lists_the_other_leads_and_answers_a_clear_error_for_the_unreadable_one(
        broker: TansuBroker, model: ScoringModel, own_redis: tuple[RedisServer, Redis], tmp_path: Path) -> None:  # noqa: F811
    server, redis = own_redis
    store = LeadStore(redis, model)
    leads = ["lead-a", "lead-broken", "lead-b"]
    await promoted_then_acknowledged(store, leads, int(time.time() * 1000))
    await redis.set(store.keys.lead("lead-broken").state, CORRUPT)

    async with running(WorkerProcess(broker.bootstrap, server.url, tmp_path)) as worker:
        status, body = await worker.get("/leads/top")
        assert status == 200, body
        assert {lead["lead_id"] for lead in body["leads"]} == {"lead-a", "lead-b"}
        assert all(lead["stage"] == "mql" for lead in body["leads"]), body

        status, body = await worker.get("/leads/lead-broken")
        assert status == 500, body
        assert body["code"] == "unreadable_lead"
        assert "'lead-broken' cannot be read (script_error" in body["message"]
        status, body = await worker.get("/leads/lead-a")
        assert (status, body["lead_id"]) == (200, "lead-a"), body

        # the board served by the same worker: its hot list leaves the lead out, its page says why
        status, body = await worker.get("/board/hot.json")
        assert status == 200, body
        assert {lead["lead_id"] for lead in body["leads"]} == {"lead-a", "lead-b"}
        status, page = await worker.get("/board/leads/lead-broken")
        assert status == 500 and "its stored state cannot be read" in page, page

        async def counted() -> bool:  # /leads/top's and the hot list's skips; a single read raises instead
            return await metric_value(worker, "leadpulse_read_skipped_leads_total", reason="script_error") == 2

        await wait_for(counted, 30, "both skipped reads counted")
        assert "read skipped lead 'lead-broken' (script_error" in worker.log.read_text()
        assert "Traceback" not in worker.log.read_text()
