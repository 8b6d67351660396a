"""Instructions Redis spends in the Lua scripts per event, on the bench's event set or on live
traffic, counted by callgrind: load-independent, unlike CPU seconds on a shared machine
(docs/performance.md, "Redis CPU per event").

Two workloads (--workload):
- `set`: the bench's event set (the throughput stages): the first events of 100,000 leads'
  journeys, in time order, spread over days; batches as a worker fetches a backlog (up to 2,000
  events of one partition).
- `live`: the latency stage's traffic: the journeys of events/12 leads (seed 99), each event
  timed as it arrives at --rate events/s, cut into batches of --batch consecutive events across
  topics (a worker keeping up at that rate fetches ~130-150 at 5 k/s). Leads get far enough in
  their journeys to reach MQL and SQL, so their stage decisions, due times and activity are
  what the scripts spend on.

The bench's Lua path is recorded in-process (`bench.ceilings.record_lua_path`: LeadStore applying
the event set batched as a worker gets it, every script call kept). All calls but those of the
last --tail events are replayed into a plain redis-server (the steady state: most leads have a
state, a stage, an activity log), saved, and the rest replayed into redis-server under
`valgrind --tool=callgrind`, counting only inside script calls (`evalGenericCommand`).

    python scripts/lua_callgrind.py [--workload set] [--events 300000] [--tail 30000] [--out callgrind.out]
    python scripts/lua_callgrind.py --workload live --events 100000 [--rate 5000] [--batch 150]

Run it in each checkout to compare (its own scripts and its own recording). Needs valgrind and
redis-server on PATH; takes a few minutes (the tail runs ~50 x slower under callgrind).
"""

import argparse
import asyncio
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import orjson
import redis.asyncio as _redis_asyncio

from leadpulse.bench import ceilings
from leadpulse.bench.eventset import event_set
from leadpulse.dev.embedded import free_port


def _ready(port: int) -> None:
    # PING, not the port: a server loading its RDB accepts connections and answers -LOADING
    for _ in range(1200):
        r = subprocess.run(["redis-cli", "-p", str(port), "ping"], check=False, capture_output=True, text=True)
        if r.stdout.strip() == "PONG":
            return
        time.sleep(0.5)
    raise SystemExit(f"redis on {port} never answered")


def start_server(work: Path, port: int, callgrind_out: str | None = None) -> subprocess.Popen[bytes]:
    """A redis-server keeping nothing on disk but what SAVE writes to `work`, answering PING;
    with `callgrind_out`, under callgrind counting only inside script calls."""
    argv = ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(work)]
    if callgrind_out:
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={callgrind_out}",
                "--toggle-collect=evalGenericCommand", *argv]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _ready(port)
    return server


def stop_server(server: subprocess.Popen[bytes], port: int) -> None:
    subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], check=False, capture_output=True)
    server.wait()


def instructions(out: str) -> int:
    """The instructions a callgrind output file counted in all."""
    report = subprocess.run(["callgrind_annotate", out], capture_output=True, text=True, check=True).stdout
    return next(int(line.split()[0].replace(",", "")) for line in report.splitlines() if "PROGRAM TOTALS" in line)


def _args(command: bytes) -> list[bytes]:
    """The arguments of one RESP-encoded command (binary-safe: lengths, not line ends)."""
    end = command.index(b"\r\n")
    n, p, out = int(command[1:end]), end + 2, []
    for _ in range(n):
        end = command.index(b"\r\n", p)
        length, p = int(command[p + 1 : end]), end + 2
        out.append(command[p : p + length])
        p += length + 2
    return out


def _events(command: bytes) -> int:
    """Events carried by an apply.lua call (KEYS: 2 indexes + 5 per lead); 0 for other scripts."""
    a = _args(command)
    nkeys = int(a[2])
    if nkeys < 7 or (nkeys - 2) % 5:
        return 0
    return sum(len(msgpack.unpackb(lead)[1]) for lead in a[5 + nkeys :])


def live(n: int, rate: float, batch: int, now: int) -> tuple[list[dict[str, Any]], list[list[tuple[str, bytes]]]]:
    """The latency stage's events (bench.latency), arriving at `rate` a second until `now`, and
    the batches a worker keeping up would fetch."""
    from leadpulse.bench.latency import live_events
    from leadpulse.dev.simulate import topic_for

    events = live_events(n, "live")
    for i, e in enumerate(events):
        e["occurred_at"] = now - int((len(events) - i) * 1000 / rate)
    records = [(f"{topic_for(e)}:{i}", orjson.dumps(e)) for i, e in enumerate(events)]
    return events, [records[i : i + batch] for i in range(0, len(records), batch)]


_Redis = _redis_asyncio.Redis


class _KeepData:
    """`ceilings.replay` flushes its database first; the tail must run on the saved state."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        self._client = _Redis(*a, **kw)

    async def flushdb(self) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def main(workload: str, events: int, tail: int, out: str, rate: float, batch: int) -> None:
    # Synchronous: the servers start and stop in turn; only recording and replaying are async.
    work = Path(tempfile.mkdtemp(prefix="lua-callgrind-"))
    port = free_port()
    plain = start_server(work, port)
    try:
        if workload == "live":
            data, batches = live(events, rate, batch, int(time.time() * 1000))
        else:
            data, batches = event_set(events, 100_000, 7, int(time.time() * 1000) - 4 * 86_400_000), None
        recorded, _, _ = asyncio.run(ceilings.record_lua_path(f"redis://127.0.0.1:{port}/1", data, 8, lambda _: None, batches))
        split, measured = len(recorded), 0
        while split > 0 and measured < tail:
            split -= 1
            measured += _events(recorded[split])
        asyncio.run(ceilings.replay(port, 0, recorded[:split], plain.pid, lambda _: None, 1))
        subprocess.run(["redis-cli", "-p", str(port), "-n", "1", "flushdb"], capture_output=True, check=True)
        subprocess.run(["redis-cli", "-p", str(port), "save"], capture_output=True, check=True)
    finally:
        stop_server(plain, port)
    port = free_port()
    traced = start_server(work, port, out)
    try:
        subprocess.run(["redis-cli", "-p", str(port), "config", "resetstat"], capture_output=True, check=True)
        _redis_asyncio.Redis = _KeepData  # type: ignore[misc]
        try:
            asyncio.run(ceilings.replay(port, 0, recorded[split:], traced.pid, lambda _: None, measured))
        finally:
            _redis_asyncio.Redis = _Redis  # type: ignore[misc]
        errors = subprocess.run(["redis-cli", "-p", str(port), "info", "errorstats"], check=False, capture_output=True, text=True).stdout
    finally:
        stop_server(traced, port)
        shutil.rmtree(work, ignore_errors=True)
    # A script missing would make the tail cheap and the figure meaningless; an error a script
    # raises itself is part of the work replayed (printed with the figure).
    if "errorstat_NOSCRIPT" in errors or "errorstat_LOADING" in errors:
        raise SystemExit(f"script calls failed during the measured tail:\n{errors}")
    total = instructions(out)
    print(f"{total / measured:,.0f} instructions per event in the scripts ({total:,} over the last {measured:,} "
          f"of {len(data):,} events, workload {workload}; {out})")
    print(errors.strip())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=("set", "live"), default="set")
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--rate", type=float, default=5000.0, help="live: events a second")
    parser.add_argument("--batch", type=int, default=150, help="live: events per batch")
    parser.add_argument("--tail", type=int, default=30_000, help="events measured under callgrind, at the end of the set")
    parser.add_argument("--out", default="callgrind.out.lua")
    a = parser.parse_args()
    main(a.workload, a.events, a.tail, a.out, a.rate, a.batch)
