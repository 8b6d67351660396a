"""A new model takes effect on every worker without a restart; every version is kept; a rollback
is one command; after a threshold change idle leads are promoted or demoted at the instant of
the change, with handoffs. Real broker, redis-server and two worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from redis.asyncio import Redis

from leadpulse import models
from leadpulse.dev.embedded import RedisServer, TansuBroker
from leadpulse.handoff import iso
from leadpulse.keys import Keys

from tests.support.kafkatools import WorkerProcess, consume_until, produce, read_all, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ADMIN = "model-admin"
DEFAULT = Path(__file__).parent.parent / "src/leadpulse/default_model.yaml"


def model_yaml(version: str, mql: float = 60) -> str:
    data = yaml.safe_load(DEFAULT.read_text())
    data["version"] = version
    for stage in data["stages"]:
        if stage["name"] == "mql":
            stage["min_score"] = mql
    return yaml.safe_dump(data, sort_keys=False)


async def post_model(worker: WorkerProcess, body: bytes) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/yaml"}
    async with aiohttp.ClientSession() as http, http.post(worker.url + "/admin/model", data=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_models_reload_on_every_worker_re_evaluate_idle_leads_and_roll_back(
        broker: TansuBroker, tmp_path: Path) -> None:
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", appendonly=False)
    server.start()
    client = Redis.from_url(server.url)
    model_file = tmp_path / "model.yaml"
    model_file.write_text(model_yaml("v1"))
    first = WorkerProcess(broker.bootstrap, server.url, tmp_path, model=model_file, admin_token=ADMIN)
    second = first.successor()
    workers = [first, second]
    try:
        for w in workers:
            w.start()
        for w in workers:
            await w.wait_ready()
        now = int(time.time() * 1000) - 60_000
        demo = {"event_id": "x-demo", "source": "web", "type": "demo_request", "occurred_at": now, "lead_id": "idle-x",
                "properties": {"url": "https://acme.io/demo"}}
        await produce(broker.bootstrap, [(first.topic("web"), b"idle-x", orjson.dumps(demo))])

        async def scored() -> bool:
            status, body = await first.get("/leads/idle-x")
            return status == 200 and body["stage"] == "lead"

        await wait_for(scored, 60, "idle-x to be scored (50 points: a lead)")

        # An invalid model is refused with its error; the active one stays.
        status, body = await post_model(first, b"version: v-bad\nstages: []\n")
        assert status == 400 and body["code"] == "invalid_model" and "body:" in body["message"]
        # The MQL bar lowered to 45: idle-x (no event since) is promoted at the instant of the change.
        status, body = await post_model(first, model_yaml("v2", mql=45).encode())
        assert status == 200 and body["status"] == "activated" and body["version"] == "v2"
        v2 = await models.active(client, Keys())
        assert v2 is not None and v2.version == "v2"

        async def served_by_every_worker(version: str) -> bool:
            views = [await w.get("/leads/idle-x") for w in workers]
            return all(status == 200 and view["model_version"] == version for status, view in views)

        await wait_for(lambda: served_by_every_worker("v2"), 60, "both workers to score with v2")

        def handoffs(records: list[Any]) -> list[dict[str, Any]]:
            return [orjson.loads(r.value) for r in records]

        topic = first.settings["handoff_topic"]
        records = await consume_until(broker.bootstrap, topic, lambda rs: len(rs) >= 1, 60)
        promoted = handoffs(records)[0]
        assert promoted["lead_id"] == "idle-x" and promoted["kind"] == "promoted" and promoted["stage"] == "mql"
        assert promoted["model_version"] == "v2" and promoted["crossed_at"] == iso(v2.activated_at)
        assert promoted["triggered_by_event_id"] is None and promoted["threshold"] == 45

        # One command rolls back: v1 again, and idle-x (just under 50 by now) leaves MQL at that instant.
        out = subprocess.run([sys.executable, "-m", "leadpulse", "rollback"], env=first.env, capture_output=True, text=True)
        assert out.returncode == 0 and "model v1 activated (activation #3)" in out.stdout, out.stderr
        await wait_for(lambda: served_by_every_worker("v1"), 60, "both workers to score with v1 again")
        records = await consume_until(broker.bootstrap, topic, lambda rs: len(rs) >= 2, 60)
        demoted = handoffs(records)[1]
        back = await models.active(client, Keys())
        assert back is not None and back.number == 3
        assert demoted["kind"] == "demoted" and demoted["previous_stage"] == "mql" and demoted["model_version"] == "v1"
        assert demoted["crossed_at"] == iso(back.activated_at)

        # The model file changed on disk: a new version, activated by the watching workers.
        model_file.write_text(model_yaml("v3", mql=70))
        await wait_for(lambda: served_by_every_worker("v3"), 60, "the changed file to be activated")
        # SIGHUP re-reads the file even when nothing about it looks changed.
        stat = model_file.stat()
        text = model_yaml("v4", mql=70)
        assert len(text) == len(model_yaml("v3", mql=70))
        # Written aside with the old times, then renamed over: the watchers never see the file with
        # a new mtime, even for the moment between a write and a utime.
        aside = model_file.with_name(model_file.name + ".new")
        aside.write_text(text)
        os.utime(aside, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        os.replace(aside, model_file)
        first.signal(signal.SIGHUP)
        await wait_for(lambda: served_by_every_worker("v4"), 60, "SIGHUP to activate the file")

        out = subprocess.run([sys.executable, "-m", "leadpulse", "models", "--json"], env=first.env, capture_output=True)
        log = orjson.loads(out.stdout)
        assert [(a["activation"], a["version"]) for a in log] == [(1, "v1"), (2, "v2"), (3, "v1"), (4, "v3"), (5, "v4")]
        assert all(a["superseded_at"] for a in log[:-1]) and log[-1]["superseded_at"] is None
        assert log[0]["activated_by"].startswith("worker start on ") and log[2]["origin"] == "rollback to v1"
        assert log[3]["activated_by"].startswith("file change") and log[4]["activated_by"].startswith("SIGHUP")
        # The same version with other content is refused: "which version scored what" has one answer.
        status, body = await post_model(first, model_yaml("v2", mql=46).encode())
        assert status == 409 and body["code"] == "version_conflict"
        # No handoff twice, though two workers followed every change.
        ids = Counter(h["handoff_id"] for h in handoffs(await read_all(broker.bootstrap, topic)))
        assert ids and max(ids.values()) == 1
    finally:
        for w in workers:
            w.stop()
        await client.aclose()
        server.stop()
