"""Outcome and handoff records in: a JSONL file or a topic, each record validated.

A record that fails its schema (schemas/outcome.schema.json, schemas/handoff.schema.json) is
not used, and not lost either: it is kept with its position and reason, and the report says
how many there were. A record seen twice (same outcome_id / handoff_id: a redelivery) counts once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson
from aiokafka import AIOKafkaConsumer

from .. import kafka
from ..errors import ConfigError, InvalidEvent
from ..events import load_schema, parse_time
from ..settings import Settings

POSITIVE_DEFAULT = ("won",)
NEGATIVE_DEFAULT = ("lost", "sql_rejected")
OUTCOMES = ("sql_accepted", "sql_rejected", "opportunity_created", "won", "lost")

_validate_outcome = fastjsonschema.compile(load_schema("outcome.schema.json"))
_validate_handoff = fastjsonschema.compile(load_schema("handoff.schema.json"))


@dataclass(frozen=True, slots=True)
class Outcome:
    outcome_id: str
    lead_id: str
    outcome: str
    at: int  # occurred_at, epoch ms
    reason: str | None = None
    score: float | None = None
    stage: str | None = None
    fit_grade: str | None = None
    model_version: str | None = None
    arm: str | None = None
    first_seen_at: int | None = None
    mql_at: int | None = None
    sql_at: int | None = None
    #: the record carries the lead's lifecycle (mql_at/sql_at given, even as null): the
    #: worker's records do, a label file from another system may not
    lifecycle: bool = False


@dataclass(frozen=True, slots=True)
class Handoff:
    handoff_id: str
    kind: str
    lead_id: str
    stage: str
    previous_stage: str
    score: float
    fit_grade: str
    model_version: str
    at: int  # crossed_at, epoch ms
    arm: str | None = None


@dataclass
class Records:
    outcomes: list[Outcome] = field(default_factory=list)
    handoffs: list[Handoff] = field(default_factory=list)
    #: "<where>: <reason>" of every record that could not be used
    invalid: list[str] = field(default_factory=list)
    duplicates: int = 0


def _time(value: Any) -> int | None:
    return None if value is None else parse_time(value)


def outcome_from(data: Any) -> Outcome:
    """One outcome record, validated; raises ValueError with the reason."""
    try:
        _validate_outcome(data)
        return Outcome(
            outcome_id=data["outcome_id"], lead_id=data["lead_id"], outcome=data["outcome"],
            at=parse_time(data["occurred_at"]), reason=data.get("reason"),
            score=data.get("score"), stage=data.get("stage"), fit_grade=data.get("fit_grade"),
            model_version=data.get("model_version"), arm=data.get("arm"),
            first_seen_at=_time(data.get("first_seen_at")), mql_at=_time(data.get("mql_at")),
            sql_at=_time(data.get("sql_at")), lifecycle="mql_at" in data or "sql_at" in data,
        )
    except fastjsonschema.JsonSchemaValueException as exc:
        raise ValueError(exc.message.removeprefix("data").lstrip(". ")) from None
    except InvalidEvent as exc:
        raise ValueError(str(exc)) from None


def handoff_from(data: Any) -> Handoff:
    try:
        _validate_handoff(data)
        return Handoff(
            handoff_id=data["handoff_id"], kind=data["kind"], lead_id=data["lead_id"],
            stage=data["stage"], previous_stage=data["previous_stage"], score=data["score"],
            fit_grade=data["fit_grade"], model_version=data["model_version"],
            at=parse_time(data["crossed_at"]), arm=data.get("arm"),
        )
    except fastjsonschema.JsonSchemaValueException as exc:
        raise ValueError(exc.message.removeprefix("data").lstrip(". ")) from None
    except InvalidEvent as exc:
        raise ValueError(str(exc)) from None


def deciding(outcomes: Iterable[Outcome], positive: Sequence[str], negative: Sequence[str]) -> dict[str, tuple[bool, Outcome]]:
    """Each lead's label and the outcome that decides it: its first positive outcome, else its
    first negative one. Leads with neither (still open) are not in the result."""
    out: dict[str, tuple[bool, Outcome]] = {}
    for o in sorted(outcomes, key=lambda o: (o.at, o.outcome_id)):
        label = o.outcome in positive
        if not label and o.outcome not in negative:
            continue
        held = out.get(o.lead_id)
        if held is None or (label and not held[0]):
            out[o.lead_id] = (label, o)
    return out


def jsonl(path: Path) -> Iterator[tuple[str, bytes]]:
    """(position, line) of every non-blank line of a JSONL file."""
    try:
        with path.open("rb") as lines:
            for n, line in enumerate(lines, 1):
                if line.strip():
                    yield f"{path.name}:{n}", line
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def collect(outcome_lines: Iterable[tuple[str, bytes]], handoff_lines: Iterable[tuple[str, bytes]] = ()) -> Records:
    out = Records()
    seen: set[str] = set()
    for kind, lines in (("outcome", outcome_lines), ("handoff", handoff_lines)):
        for where, raw in lines:
            try:
                data = orjson.loads(raw)
                record = outcome_from(data) if kind == "outcome" else handoff_from(data)
            except (orjson.JSONDecodeError, ValueError) as exc:
                out.invalid.append(f"{where}: {exc}")
                continue
            key = f"{kind}\x00{record.outcome_id if isinstance(record, Outcome) else record.handoff_id}"
            if key in seen:
                out.duplicates += 1
                continue
            seen.add(key)
            if isinstance(record, Outcome):
                out.outcomes.append(record)
            else:
                out.handoffs.append(record)
    return out


async def read_topic(settings: Settings, topic: str, batch: int = 5000) -> list[tuple[str, bytes]]:
    """Every record of `topic` from its beginning to its end when we started (no consumer
    group: reading commits nothing). A topic that does not exist holds nothing."""
    consumer = AIOKafkaConsumer(**kafka.client_options(settings), group_id=None, enable_auto_commit=False)
    await kafka.started(consumer)
    try:
        tps = await kafka.partitions(consumer, [topic])
        if not tps:
            return []
        ends = await kafka.high_watermarks(consumer, tps)
        pending = [tp for tp in tps if ends[tp] > await consumer.position(tp)]
        out: list[tuple[str, bytes]] = []
        while pending:
            fetched = await consumer.getmany(*pending, timeout_ms=1000, max_records=batch)
            for tp, messages in fetched.items():
                out.extend(
                    (f"{tp.topic}:{tp.partition}:{m.offset}", m.value or b"")
                    for m in messages if m.offset < ends[tp]
                )
            pending = [tp for tp in pending if await consumer.position(tp) < ends[tp]]
        return out
    finally:
        await consumer.stop()


def load(settings: Settings | None, outcomes: Path | None, handoffs: Path | None) -> Records:
    """Outcomes from a file, or from the outcomes topic; handoffs from a file, or from the
    handoff topic when outcomes come from a topic too (a file of outcomes alone is a label
    file: no funnel steps from the topic then)."""
    if outcomes is not None:
        return collect(jsonl(outcomes), jsonl(handoffs) if handoffs is not None else ())
    if settings is None:
        raise ConfigError("give --outcomes FILE or the Kafka settings to read the outcomes topic")

    async def both() -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
        lines = await read_topic(settings, settings.outcomes_topic)
        hand = list(jsonl(handoffs)) if handoffs is not None else await read_topic(settings, settings.handoff_topic)
        return lines, hand

    lines, hand = asyncio.run(both())
    return collect(lines, hand)
