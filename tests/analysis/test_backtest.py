"""`leadpulse backtest`: retained history through a candidate beside the active model, in a key
space of its own. It reproduces the live stages for the active model, reports what the candidate
would change, and leaves the live Redis and the handoff topic exactly as they were. Real broker,
redis-server and worker."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import yaml
from redis.asyncio import Redis

from leadpulse.dev.embedded import RedisServer, TansuBroker
from leadpulse.dev.simulate import key_for
from leadpulse.kafka import high_watermarks, partitions
from leadpulse.model import ScoringModel
from leadpulse.state import LeadStore

from tests.support.kafkatools import WorkerProcess, committed_all, produce, running, wait_for
from tests.support.reference import fixed_events

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DEFAULT = Path(__file__).parents[2] / "src/leadpulse/default_model.yaml"


async def snapshot(client: Redis) -> dict[bytes, str]:
    """Every key of the Redis with a digest of its value: what "untouched" is checked against."""
    out = {}
    async for key in client.scan_iter(count=1000):
        dumped = await client.dump(key)
        out[key] = hashlib.sha256(dumped or b"").hexdigest()
    return out


async def handoff_end(bootstrap: str, topic: str) -> dict:  # type: ignore[type-arg]
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        return await high_watermarks(consumer, await partitions(consumer, [topic]))
    finally:
        await consumer.stop()


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


async def test_backtest_replays_history_beside_the_active_model_and_touches_nothing_live(
        broker: TansuBroker, tmp_path: Path, model: ScoringModel) -> None:
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", appendonly=False)
    server.start()
    client = Redis.from_url(server.url)
    worker = WorkerProcess(broker.bootstrap, server.url, tmp_path)
    events = fixed_events(150, seed=31)
    try:
        async with running(worker):
            await produce(broker.bootstrap, [(worker.topic("web"), key_for(e), orjson.dumps(e)) for e in events])
            topics = [worker.topic(s) for s in ("web", "email", "webinar", "profile", "crm")]
            await wait_for(lambda: committed_all(broker.bootstrap, worker.settings["group_id"], topics), 120,
                           "the worker to score every event")
        # The worker is stopped: nothing else writes to Redis or the handoff topic from here on.
        now = int(time.time() * 1000)
        live = LeadStore(client, model)
        leads = sorted({e["lead_id"] for e in events})
        live_stages = {lead: v.stage for lead, v in zip(leads, await live.read([(lead, now) for lead in leads])) if v}
        assert set(live_stages.values()) >= {"lead", "mql"}

        data = yaml.safe_load(DEFAULT.read_text())
        data["version"] = "candidate-1"
        for stage in data["stages"]:
            if stage["name"] == "mql":
                stage["min_score"] = 30
        candidate = tmp_path / "candidate.yaml"
        candidate.write_text(yaml.safe_dump(data, sort_keys=False))
        outcomes = tmp_path / "outcomes.jsonl"
        won = {lead for lead, stage in live_stages.items() if stage != "lead"}
        outcomes.write_bytes(b"\n".join(orjson.dumps({
            "outcome_id": f"{lead}-o", "lead_id": lead, "outcome": "won" if lead in won else "lost",
            "occurred_at": iso(now)}) for lead in leads))

        before, ends = await snapshot(client), await handoff_end(broker.bootstrap, worker.settings["handoff_topic"])
        for engine in ([], ["--engine-redis", server.url]):  # its own redis-server; private prefixes in the live one
            out_dir = tmp_path / f"out{len(engine)}"
            out = subprocess.run([sys.executable, "-m", "leadpulse", "backtest", str(candidate), "--out", str(out_dir),
                                  "--outcomes", str(outcomes), *engine], env=worker.env, capture_output=True, text=True,
                                 timeout=300)
            assert out.returncode == 0, out.stderr[-3000:]
            report = orjson.loads((out_dir / "report.json").read_bytes())
            assert report["input"]["events"] == len(events) and report["models"] == {
                "active": model.version, "candidate": "candidate-1"}
            # The active model's replay is what the live system holds, lead by lead.
            listed = {r["lead_id"]: r for r in report["stage_changes"]["listed"]}
            assert report["stages"]["active"] == {s: list(live_stages.values()).count(s) for s in set(live_stages.values())}
            for lead, stage in live_stages.items():
                assert listed[lead]["active_stage"] == stage if lead in listed else True
            # A lower MQL bar: more MQLs, and every changed lead moved up from "lead".
            assert report["stages"]["candidate"]["mql"] > report["stages"]["active"]["mql"]
            assert report["stage_changes"]["count"] == len(listed) > 0
            assert all(r["active_stage"] == "lead" and r["candidate_stage"] == "mql" for r in listed.values())
            weekly = {m: sum(w.get(m, {}).get("mql", 0) for w in report["weeks"]) for m in ("active", "candidate")}
            assert weekly["candidate"] > weekly["active"] > 0
            assert report["scores"]["active"]["leads"] == len(live_stages)
            assert set(report["scores"]["active"]["deciles"]) == {f"p{10 * i}" for i in range(1, 10)}
            conv = report["outcomes"]
            assert conv["leads"] == len(leads) and conv["converted"] == len(won)
            assert conv["active"]["by_score_decile"] and conv["candidate"]["by_score_decile"]
            assert "Leads whose stage would change" in (out_dir / "report.html").read_text()
        assert await snapshot(client) == before, "the live Redis changed"
        assert await handoff_end(broker.bootstrap, worker.settings["handoff_topic"]) == ends, "something was published"
    finally:
        await client.aclose()
        server.stop()
