"""`leadpulse dev`: broker, Redis, worker and simulated buyers on this machine, in one command."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import mode
import orjson
from aiokafka import AIOKafkaConsumer
from pydantic import SecretStr
from rich.console import Console

from .. import kafka
from ..model import load_model
from ..settings import Settings, load_settings
from ..worker import FaustWorker, ScoringService, create_app
from .embedded import Stack
from .simulate import journeys, key_for, topic_for

console = Console(highlight=False)


class Simulator(mode.Service):
    """Replays synthetic journeys in real time: wave after wave of new leads."""

    def __init__(self, settings: Settings, service: ScoringService, leads: int, rate: float, waves: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.settings, self.service = settings, service
        self.leads, self.rate, self.waves = leads, rate, waves
        self.sent = 0

    @mode.Service.task
    async def _produce(self) -> None:
        await self.service.prepared.wait()
        producer = await kafka.started_producer(self.settings, self.settings.input_topics, acks="all", linger_ms=5)
        rng = random.Random(1)
        try:
            wave = 0
            while not self.should_stop and (self.waves == 0 or wave < self.waves):
                wave += 1
                started, n = time.monotonic(), 0
                for event in journeys(self.leads, seed=wave, prefix=f"w{wave}-lead"):
                    if self.should_stop:
                        return
                    event["occurred_at"] = int(time.time() * 1000)
                    value = orjson.dumps(event)
                    if rng.random() < 0.005:  # a broken tracker now and then: watch the DLQ
                        value = value[: len(value) // 2]
                    await producer.send(topic_for(event, self.settings.topic_prefix), value, key=key_for(event))
                    n += 1
                    self.sent += 1
                    ahead = n / self.rate - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            await producer.flush()
        finally:
            await producer.stop()


class Console_(mode.Service):
    """Prints handoffs as sales would receive them, and a summary every few seconds."""

    def __init__(self, settings: Settings, service: ScoringService, simulator: Simulator, **kw: Any) -> None:
        super().__init__(**kw)
        self.settings, self.service, self.simulator = settings, service, simulator
        self.handoffs = 0

    @mode.Service.task
    async def _print_handoffs(self) -> None:
        await self.service.prepared.wait()
        consumer = AIOKafkaConsumer(
            self.settings.handoff_topic, **kafka.client_options(self.settings), group_id=None,
            auto_offset_reset="latest", enable_auto_commit=False,
        )
        await consumer.start()
        try:
            while not self.should_stop:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        self.handoffs += 1
                        self._show(orjson.loads(record.value))
        finally:
            await consumer.stop()

    def _show(self, h: dict[str, Any]) -> None:
        reasons = ", ".join(f"{s['rule_id']} {s['points']:+.0f}" for s in h["top_signals"][:3])
        if h["kind"] == "promoted":
            console.print(
                f"[bold green]▲ {h['stage'].upper()}[/] {h['lead_id']}  score {h['score']:.0f} "
                f"(≥{h['threshold']:g})  grade {h['fit_grade']}  because {reasons}"
            )
        else:
            console.print(f"[yellow]▼ {h['previous_stage']} → {h['stage']}[/] {h['lead_id']}  score {h['score']:.0f}")

    @mode.Service.timer(5.0)
    async def _summary(self) -> None:
        m = self.service.metrics.registry
        dlq = sum(s.value for metric in m.collect() if metric.name == "leadpulse_dlq" for s in metric.samples
                  if s.name.endswith("_total"))
        console.print(
            f"[dim]… {self.simulator.sent} events sent, {self.service.processed} processed, "
            f"{self.handoffs} handoffs, {dlq:.0f} dead-lettered, ready={self.service.ready}[/]"
        )


def run_dev(*, leads: int, rate: float, waves: int, http_port: int, model_path: Path | None, data_dir: Path | None) -> None:
    model = load_model(model_path)
    console.print("[bold]LeadPulse dev[/]: starting a Tansu broker and a redis-server …")
    with Stack(data_dir) as stack:
        settings = load_settings(
            kafka_bootstrap=stack.broker.bootstrap, redis_url=SecretStr(stack.redis.url), http_port=http_port,
            model=model_path, partitions=4, sweep_interval=2.0, log_level="warning",
        )
        app, service = create_app(settings, model)
        simulator = Simulator(settings, service, leads, rate, waves)
        printer = Console_(settings, service, simulator)
        port = http_port
        console.print(
            f"  broker   {stack.broker.bootstrap}  (topics {', '.join(settings.input_topics)})\n"
            f"  redis    {stack.redis.url}\n"
            f"  model    {model.version}\n"
            f"  API      http://127.0.0.1:{port}/leads/top  /leads/<id>  /metrics  /readyz\n"
            f"  traffic  {leads} leads per wave at {rate:g} events/s — Ctrl-C stops everything"
        )
        worker = FaustWorker(app, service, simulator, printer, loglevel="warning", redirect_stdouts=False)
        try:
            worker.execute_from_commandline()
        except SystemExit:
            pass
    console.print("stopped; broker and Redis data removed")
