"""The shadow model: a candidate scored beside the active one on every event, seen by no one.

`LEADPULSE_SHADOW_MODEL` names its YAML. Every batch is applied a second time with it, into a
key space of its own (`<p>:shadow`, keys.py) that the API never reads and a rescore never
switches to; the same lib.lua computes its scores and stages from the shadow's spec. Its
transitions go to `LEADPULSE_SHADOW_TOPIC` (`leads.handoff.shadow`), which the alerts service
does not follow. Prometheus counts how often its stage decisions agree with the live ones and
observes the score difference at each decision (metrics.py, `leadpulse_shadow_*`).

Same round trip: the live and the shadow apply of a batch are started together, and their
script calls are sent to Redis in one pipeline (`SharedRound`). The shadow never holds up the
live path: whatever fails in it is logged, counted (`leadpulse_shadow_failures_total`) and given
up, and the batch is committed without it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from . import rawpipe, scripts
from .bounded import RecentIds
from .handoff import build, publishes
from .metrics import Metrics
from .model import ScoringModel, load_model
from .settings import Settings
from .state import BatchResult, LeadStore, Transition
from .who import Who

log = logging.getLogger("leadpulse.shadow")

Call = tuple[scripts.Script, Sequence[str], Sequence[Any]]


def topics(settings: Settings) -> list[str]:
    """The topic the worker creates for a shadow, if one runs."""
    return [settings.shadow_topic] if settings.shadow_model is not None else []


def tails(shadow: Shadow | None) -> list[tuple[str, RecentIds[str]]]:
    """(topic, ids published) whose tail the worker reads at start, so that a replay after a
    restart does not publish a shadow handoff again."""
    return [(shadow.topic, shadow.published)] if shadow is not None else []


class SharedRound(scripts.Scripts):
    """Scripts whose calls made in the same turn of the event loop go to Redis in one pipeline.

    The live and the shadow store share one: both applies of a batch reach `pipelined` before
    the loop turns, so Redis sees one round trip with both stores' calls. Each caller gets its
    own replies and its own errors, as from `Scripts.pipelined`."""

    def __init__(self, redis: Any) -> None:
        super().__init__(redis)
        self._waiting: list[tuple[Sequence[Call], asyncio.Future[list[Any]]]] = []
        self._flushing: set[asyncio.Task[None]] = set()

    async def pipelined(self, calls: Sequence[Call], raise_on_error: bool = True) -> list[Any]:
        if not calls:
            return []
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Any]] = loop.create_future()
        self._waiting.append((calls, fut))
        if len(self._waiting) == 1:
            loop.call_soon(self._flush_soon)
        results = await fut
        return rawpipe.checked(results) if raise_on_error else results

    def _flush_soon(self) -> None:
        waiting, self._waiting = self._waiting, []
        task = asyncio.ensure_future(self._flush(waiting))
        self._flushing.add(task)  # a reference until it ends (the loop keeps only weak ones)
        task.add_done_callback(self._flushing.discard)

    async def _flush(self, waiting: list[tuple[Sequence[Call], asyncio.Future[list[Any]]]]) -> None:
        try:
            replies = await super().pipelined([c for calls, _ in waiting for c in calls], raise_on_error=False)
        except BaseException as exc:
            for _, fut in waiting:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else asyncio.CancelledError())
            if not isinstance(exc, Exception):
                raise
            return
        start = 0
        for calls, fut in waiting:
            if not fut.done():
                fut.set_result(replies[start : start + len(calls)])
            start += len(calls)


@dataclass(slots=True)
class Shadowed:
    """The shadow's part of one batch."""

    result: BatchResult | None
    compared: bool = False


def _stage(model: ScoringModel, index: int) -> str:
    """A stage's name by the index the scripts report: the model's stages, then its lifecycle's
    (sal, opportunity, customer), so CRM moves are compared by name like score decisions."""
    return model.stage_names[index]


def _decisions(transitions: Sequence[Transition], model: ScoringModel) -> dict[tuple[str, str, str, str], Transition]:
    """Event-caused decisions by (lead, event, kind, the stage entered; for a demotion, the stage
    left): what is compared."""
    out = {}
    for t in transitions:
        if t.event_id is None:
            continue
        stage = _stage(model, t.from_stage if t.kind == "demoted" else t.to_stage)
        out.setdefault((t.lead_id, t.event_id, t.kind, stage), t)
    return out


class Shadow:
    def __init__(self, live: LeadStore, model: ScoringModel, producer: Any, topic: str, metrics: Metrics,
                 who: Who | None = None) -> None:
        self.live = live
        #: the live handoffs' `who` (LEADPULSE_HANDOFF_WHO): the shadow topic carries no more PII than they do
        self.who = who or Who()
        self.model = model
        self.store = LeadStore(live.redis, model, live.keys.in_space(live.keys.shadow_space), live.retention)
        joint = SharedRound(live.redis)
        live.scripts = self.store.scripts = joint
        self.producer = producer
        self.topic = topic
        self.metrics = metrics
        self.published: RecentIds[str] = RecentIds(50_000)
        for op in ("apply", "publish", "compare", "sweep"):
            metrics.shadow_failures.labels(op)

    @classmethod
    def configured(cls, settings: Settings, live: LeadStore, producer: Any, metrics: Metrics) -> Shadow | None:
        """The shadow LEADPULSE_SHADOW_MODEL asks for, or None."""
        if settings.shadow_model is None:
            return None
        model = load_model(settings.shadow_model)
        log.info("shadow model %s (%s): handoffs on %s", model.version, settings.shadow_model, settings.shadow_topic)
        return cls(live, model, producer, settings.shadow_topic, metrics, Who.from_settings(settings))

    def _failed(self, op: str, exc: BaseException) -> None:
        self.metrics.shadow_failures.labels(op).inc()
        log.warning("shadow %s failed, given up (the live model is not affected): %s: %s", op, type(exc).__name__, exc)

    async def beside(self, live: Coroutine[Any, Any, BatchResult], batch: Sequence[Any], now_ms: int) -> tuple[BatchResult, Shadowed]:
        """Run the live apply `live` and the shadow's apply of the same events together: the
        live result (or its error, raised), and the shadow's."""
        results = await asyncio.gather(live, self._apply(batch, now_ms))
        return results[0], results[1]

    async def _apply(self, batch: Sequence[Any], now_ms: int) -> Shadowed:
        try:
            return Shadowed(await self.store.apply(batch, now_ms))
        except Exception as exc:  # noqa: BLE001 - never the live path's failure
            self._failed("apply", exc)
            return Shadowed(None)

    def sends(self, shadowed: Shadowed | None, live: BatchResult | None) -> list[Awaitable[Any]]:
        """What publishing a batch adds for the shadow (awaited beside the live sends): its
        handoffs on the shadow topic, and the comparison with the live decisions (once)."""
        if shadowed is None or shadowed.result is None:
            return []
        out: list[Awaitable[Any]] = [self._publish(shadowed.result.transitions)]
        if not shadowed.compared:
            shadowed.compared = True
            out.append(self._compare(live.transitions if live else [], shadowed.result.transitions))
        return out

    async def _publish(self, transitions: Sequence[Transition]) -> Awaitable[None]:
        sent = []
        try:
            for t in transitions:
                if t.handoff_id in self.published or not publishes(self.model, t):
                    continue
                record = build(self.model, t, self.who)
                fut = await self.producer.send(self.topic, orjson.dumps(record), key=t.lead_id.encode(),
                                               headers=[("leadpulse.handoff_id", t.handoff_id.encode())])
                sent.append((t, record, fut))
        except Exception as exc:  # noqa: BLE001
            self._failed("publish", exc)

        async def acknowledged() -> None:
            try:
                for t, record, fut in sent:
                    await fut
                    self.published.add(t.handoff_id)
                    self.metrics.shadow_handoffs.labels(record["stage"], t.kind).inc()
            except Exception as exc:  # noqa: BLE001
                self._failed("publish", exc)

        return acknowledged()

    async def _compare(self, live: Sequence[Transition], shadow: Sequence[Transition]) -> Awaitable[None]:
        async def compared() -> None:
            try:
                await self.compare(live, shadow)
            except Exception as exc:  # noqa: BLE001
                self._failed("compare", exc)

        return compared()

    async def compare(self, live: Sequence[Transition], shadow: Sequence[Transition]) -> None:
        """Count each event-caused decision of either model as agreeing or one-sided, and
        observe shadow − live score at it: a one-sided decision's other score is the other
        model's lead read at that instant (one round trip for the batch's)."""
        mine, theirs = _decisions(live, self.live.model), _decisions(shadow, self.model)
        deltas: list[float] = []
        for key in mine.keys() & theirs.keys():
            self.metrics.shadow_decisions.labels(key[2], key[3], "agree").inc()
            deltas.append(theirs[key].score - mine[key].score)
        # (side, decisions only that side made, the store holding the other side, sign of delta)
        for side, decided, others, other, sign in (("live_only", mine, theirs, self.store, 1.0),
                                                   ("shadow_only", theirs, mine, self.live, -1.0)):
            alone = [(key, t) for key, t in decided.items() if key not in others]
            if not alone:
                continue
            for key, _ in alone:
                self.metrics.shadow_decisions.labels(key[2], key[3], side).inc()
            views = await other.read([(t.lead_id, t.crossed_at) for _, t in alone])
            deltas.extend(sign * (view.explanation.score - t.score) for (_, t), view in zip(alone, views) if view is not None)
        for d in deltas:
            self.metrics.shadow_score_delta.observe(d)
        self.metrics.shadow_score_delta_sum.inc(sum(deltas))

    async def sweep(self, now_ms: int) -> None:
        """The shadow's decay demotions: published on its topic, acknowledged in its space."""
        try:
            while True:
                transitions = await self.store.sweep(now_ms)
                if transitions:
                    await (await self._publish(transitions))
                    await self.store.ack(transitions)
                if len(transitions) < 500:
                    return
        except Exception as exc:  # noqa: BLE001
            self._failed("sweep", exc)
