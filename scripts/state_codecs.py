"""What a different lead-state format would save in Redis's Lua: today's cmsgpack array against a
flat msgpack layout and a binary (`struct`) one, decoding and encoding real states
(docs/performance.md, "The state format is not the lever").

The states are the latency stage's live traffic (scripts/lua_callgrind.py `live`: --events at
5 k/s, batches of 150) applied through LeadStore into a private redis-server; --states of them
(seed 1) go to scripts/state_codecs.lua, which checks that each codec gives back exactly the
table `load` unpacks, then times each mode in the server (best of --repeats, --rounds passes
over the states each). With --callgrind, each mode also runs once in a redis-server under
callgrind: instructions per state, less the set-up's (mode `none`), load-independent.

    python scripts/state_codecs.py [--events 40000] [--states 200] [--callgrind]
"""

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import redis

sys.path.insert(0, str(Path(__file__).parent))
import lua_callgrind  # a sibling script, found through the path above

from leadpulse.bench import ceilings
from leadpulse.dev.embedded import free_port

LUA = (Path(__file__).parent / "state_codecs.lua").read_text()
MODES = ["msgpack-unpack", "msgpack-pack", "flat-unpack", "flat-pack", "struct-unpack", "struct-pack"]


async def _states(work: Path, events: int, n: int) -> list[bytes]:
    port = free_port()
    server = lua_callgrind.start_server(work, port)
    try:
        data, batches = lua_callgrind.live(events, 5000.0, 150, int(time.time() * 1000))
        await ceilings.record_lua_path(f"redis://127.0.0.1:{port}/1", data, 8, lambda _: None, batches)
        client = redis.Redis(port=port, db=1)
        states = [v for v in (client.get(k) for k in client.scan_iter(match="*:v", count=1000)) if v and len(v) > 2]
        client.close()
    finally:
        lua_callgrind.stop_server(server, port)
    random.seed(1)
    return random.sample(states, min(n, len(states)))


def main(events: int, n: int, rounds: int, repeats: int, callgrind: bool) -> None:
    work = Path(tempfile.mkdtemp(prefix="state-codecs-"))
    states = asyncio.run(_states(work, events, n))
    arg = msgpack.packb(states, use_bin_type=False)  # Redis's cmsgpack knows no bin type
    sizes = sorted(len(s) for s in states)
    print(f"{len(states)} live states, {sizes[len(sizes) // 2]} bytes median")
    port = free_port()
    server = lua_callgrind.start_server(work, port)
    try:
        client = redis.Redis(port=port)
        for mode in MODES:
            runs = [client.eval(LUA, 0, arg, rounds, mode) for _ in range(repeats)]
            best = min(float(r[0]) for r in runs)
            print(f"{mode:15} {best / 1000:6.2f} µs per state (best of {repeats}); "
                  f"bytes msgpack {runs[0][1]:,}, flat {runs[0][2]:,}, struct {runs[0][3]:,}")
        client.close()
    finally:
        lua_callgrind.stop_server(server, port)
    if not callgrind:
        return
    counts = {}
    for mode in ["none", *MODES]:
        out = str(work / f"callgrind.{mode}")
        port = free_port()
        server = lua_callgrind.start_server(work, port, out)
        try:
            redis.Redis(port=port).eval(LUA, 0, arg, 1, mode)
        finally:
            lua_callgrind.stop_server(server, port)
        counts[mode] = lua_callgrind.instructions(out)
    for mode in MODES:
        print(f"{mode:15} {(counts[mode] - counts['none']) / len(states):9,.0f} instructions per state (callgrind)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--states", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--callgrind", action="store_true")
    a = parser.parse_args()
    main(a.events, a.states, a.rounds, a.repeats, a.callgrind)
