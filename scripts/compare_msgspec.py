"""Decode + validate per event: LeadPulse's contract (orjson + the generated fast check, and the
whole `events.parse`) against msgspec typed structs, on the bench's event set.

msgspec is not a dependency: `pip install msgspec` first. Usage:
    python scripts/compare_msgspec.py [EVENTS] [LEADS] [REPEAT]   (defaults 300000 100000 7)

The msgspec model is the closest it can express (docs/performance.md says what it cannot): a
union tagged on `type` (every type name is unique across sources), one struct per type with the
source as a literal, the envelope's bounds and patterns, `properties` as a bounded dict of any
JSON, `traits` as a bounded dict of custom-trait values, and the per-type required fields. It
checks less than the contract, so its time is a lower bound for msgspec doing the whole job.
Times are the best of REPEAT passes over the whole set, per event. Then it prints, for inputs
the contract refuses or accepts, where msgspec's verdict differs from the contract's (the DLQ
reason and field of events.parse).
"""

import gc
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union

import msgspec
import orjson
from msgspec import Meta, Struct

from leadpulse import events
from leadpulse.bench.eventset import event_set
from leadpulse.errors import InvalidEvent

NOW_SLACK_MS = 10 * 365 * 86_400_000

Text = Annotated[str, Meta(min_length=1, max_length=256, pattern=r"^[^\u0000-\u001f\u007f]+$")]
EventId = Annotated[str, Meta(min_length=1, max_length=128)]
Stamp = (Annotated[str, Meta(max_length=40, pattern=r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")]
         | Annotated[float, Meta(ge=0, le=253402300799999)])
Properties = Annotated[dict[str, Any], Meta(max_length=64)]
Scalar = Annotated[str, Meta(max_length=256)] | float | bool | None
Trait = Annotated[str, Meta(max_length=1024)] | float | bool | None | Annotated[list[Scalar], Meta(max_length=32)]
Traits = Annotated[dict[str, Trait], Meta(max_length=64)]


class Envelope(Struct, tag_field="type", kw_only=True):
    event_id: EventId
    occurred_at: Stamp
    lead_id: Text | None = None
    anonymous_id: Text | None = None
    properties: Properties = {}
    traits: Traits = {}


def _union() -> Any:
    """One struct per (source, type) of the contract, with its required fields, in one union."""
    required = {"page_view": {"properties": Properties}, "attended": {"properties": Properties},
                "identify": {"lead_id": Text, "traits": Traits}, "alias": {"lead_id": Text, "anonymous_id": Text}}
    kinds: list[type] = []
    for source in ("web", "email", "webinar", "profile", "crm"):
        for name in events._SCHEMA["$defs"][source]["properties"]["type"]["enum"]:
            fields = {"source": Literal[source], **required.get(name, {})}
            kinds.append(type(f"{source}_{name}", (Envelope,), {"__annotations__": fields}, tag=name))
    return Union[tuple(kinds)]  # noqa: UP007 - a union built from a tuple


def best(fn: Callable[[], None], n: int, repeat: int) -> float:
    """Best µs per event over `repeat` passes."""
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) / n * 1e6


def main() -> None:
    n_events, n_leads, repeat = (int(a) for a in (sys.argv[1:] + ["300000", "100000", "7"][len(sys.argv) - 1:])[:3])
    start_ms = int(time.time() * 1000) - 4 * 86_400_000
    raws = [orjson.dumps(e) for e in event_set(n_events, n_leads, 7, start_ms)]
    now, skew = int(time.time() * 1000) + NOW_SLACK_MS, 300_000
    decoder = msgspec.json.Decoder(_union())
    fast = events.FAST_CHECK.check
    assert events.FAST_CHECK.active and all(fast(orjson.loads(r)) for r in raws)
    for r in raws:
        decoder.decode(r)  # every event is valid for the msgspec model too

    def contract_check() -> None:
        for r in raws:
            fast(orjson.loads(r))

    def contract_parse() -> None:
        for r in raws:
            events.parse(r, now, skew)

    def msgspec_decode() -> None:
        for r in raws:
            decoder.decode(r)

    def msgspec_event() -> None:  # to the same Event the worker uses, as events.parse returns it
        for r in raws:
            s = decoder.decode(r)
            at = s.occurred_at
            events.Event(s.event_id, s.source, type(s).__struct_config__.tag, int(at) if type(at) is not str
                         else events.parse_time(at), s.lead_id, s.anonymous_id, s.properties, s.traits)

    print(f"{len(raws):,} events of the bench set, best of {repeat}, µs per event")
    for name, fn in (("orjson.loads + fast check", contract_check), ("events.parse (whole contract -> Event)", contract_parse),
                     ("msgspec decode into structs", msgspec_decode), ("msgspec decode -> Event", msgspec_event)):
        print(f"  {name:42} {best(fn, len(raws), repeat):6.2f}")
    semantics(decoder)



def _raw(**fields: Any) -> bytes:
    base = {"event_id": "e1", "lead_id": "l1", "source": "web", "type": "page_view",
            "occurred_at": "2026-09-21T12:00:00Z", "properties": {"url": "https://x.io/pricing"}}
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not ...})


CASES = {
    "webinar minutes as text": _raw(source="webinar", type="attended", properties={"minutes": "ten"}),
    "page_view without url": _raw(properties={"title": "no url"}),
    "url as a number": _raw(properties={"url": 5}),
    "employees 2.5": _raw(source="profile", type="identify", properties=..., traits={"employees": 2.5}),
    "email trait of 400 chars": _raw(source="profile", type="identify", properties=..., traits={"email": "x" * 400}),
    "a type of another source": _raw(source="email", type="page_view"),
    "1e999 in properties": _raw(properties={"url": "u"}).replace(b"}}", b', "n": 1e999}}'),
}


def semantics(decoder: msgspec.json.Decoder) -> None:
    print("where the verdicts differ (contract: reason (field); msgspec: its error)")
    for name, raw in CASES.items():
        try:
            events.parse(raw, int(time.time() * 1000), 300_000)
            ours = "accepted"
        except InvalidEvent as exc:
            ours = f"{exc.reason} ({exc.field})"
        try:
            decoder.decode(raw)
            theirs = "accepted"
        except msgspec.MsgspecError as exc:
            theirs = str(exc)
        if ours != theirs:
            print(f"  {name:26} contract: {ours:32} msgspec: {theirs}")


if __name__ == "__main__":
    main()
