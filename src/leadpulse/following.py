"""What a worker follows besides its partitions: the key space a rescore switches to (the gate,
handover.py), the active model (models.py: reloaded between batches; the model file activated
when it changes or on SIGHUP) and the re-evaluation of idle leads after a change (reeval.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from . import models, reeval
from .errors import ConfigError
from .handover import Gate
from .metrics import Metrics
from .pipeline import Processor
from .settings import Settings
from .state import LeadStore

log = logging.getLogger("leadpulse.worker")


class Following:
    def __init__(self, store: LeadStore, processor: Processor, settings: Settings, metrics: Metrics,
                 on_switch: Callable[[str], Awaitable[None]]) -> None:
        self.store = store
        self.processor = processor
        self.settings = settings
        self.metrics = metrics
        self.gate = Gate(store.redis, store.keys, f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}",
                         on_switch, self.load_model)
        self.model_file = models.ModelFile(settings.model)
        self.registered = False

    async def register(self) -> None:
        """Heartbeat from now on: a rescore waits for this worker to hold (handover.py)."""
        await self.gate.heartbeat()
        self.registered = True

    async def leave(self) -> None:
        if self.registered:
            with contextlib.suppress(RedisError, OSError):
                await self.gate.leave()

    async def tick(self, started: bool) -> None:
        """Every HEARTBEAT_S: the heartbeat, and the model file if it changed."""
        if self.registered:
            with contextlib.suppress(RedisError, OSError):
                await self.gate.heartbeat()
        if self.model_file.changed() and started:
            await self.activate_file("file change")

    def on_sighup(self) -> None:
        asyncio.ensure_future(self.activate_file("SIGHUP"))

    async def load_model(self, activation: int) -> None:
        model = await models.load_activation(self.store.redis, self.store.keys, activation)
        if model is None or model == self.store.model:
            return
        self.store.use_model(model)
        self.processor.model = model
        self.metrics.model.info({"version": model.version})
        self.metrics.sales_sla.set((model.lifecycle.sla or 0) / 1000)
        log.info("scoring with model %s (activation %d)", model.version, activation)

    async def activate_file(self, why: str) -> None:
        """Activate the model file if it holds a new model (every worker follows); an invalid one
        is refused with its error and the active model stays."""
        if self.settings.model is None:
            return
        try:
            text, origin = models.model_text(self.settings.model)
            done = await models.activate(self.store.redis, self.store.keys, text, f"{why} on {socket.gethostname()}",
                                         origin, self.store.retention.check)
        except ConfigError as exc:
            log.error("model not activated (%s): %s; the active model stays", why, exc)
        except RedisError as exc:
            log.warning("model not activated (%s): redis: %s", why, exc)
        else:
            log.info("model %s %s (%s)", done.version, "activated" if done.changed else "already active", why)

    async def reevaluate(self) -> None:
        """Decide leads again after a model change, `reeval_rate` leads a second (the sweeping
        worker, each sweep: reeval.py)."""
        if self.gate.model is None:
            return
        budget = max(1, int(self.settings.reeval_rate * self.settings.sweep_interval))
        spent = 0
        while spent < budget:
            looked = await reeval.step(self.store, self.gate.model, self.processor.settle, budget - spent)
            if not looked:
                return
            spent += looked
