"""Crash soak: replay a large fixed event file through a real worker, SIGKILL it at random
moments, restart it each time, then check every lead against the offline reference and the
handoff topic against the reference's transitions (each handoff id exactly once).

    .venv/bin/python scripts/soak.py --leads 10500 --kills 5      # ≈ 209 k events

It starts its own Tansu broker and redis-server on free ports and removes them afterwards.
The same checks run in CI on a small file (tests/test_reliability.py).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from leadpulse.dev.embedded import Stack
from leadpulse.model import load_model
from tests.support.kafkatools import WorkerProcess, produce
from tests.support.reference import chunks, fixed_events
from tests.test_reliability import assert_matches_reference, drained, records_for


async def soak(leads: int, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    model = load_model()
    events = fixed_events(leads, seed=seed)
    print(f"{len(events)} events for {leads} leads; {kills} SIGKILLs at random moments")
    with tempfile.TemporaryDirectory(prefix="leadpulse-soak-") as tmp, Stack(tmp) as stack:
        logs = Path(tmp)
        current = WorkerProcess(stack.broker.bootstrap, stack.redis.url, logs, batch_max=2000).start()
        started = time.monotonic()
        parts = chunks(events, 40)
        kill_after = set(rng.sample(range(len(parts)), min(kills, len(parts))))
        done_kills = 0
        for i, part in enumerate(parts):
            await produce(stack.broker.bootstrap, records_for(current, part))
            await asyncio.sleep(rng.uniform(0.1, 1.0))
            if i in kill_after:
                current = current.kill_and_restart()
                done_kills += 1
                print(f"  SIGKILL {done_kills} after {sum(len(p) for p in parts[: i + 1])} events produced")
        await current.wait_ready(180)
        await drained(current, stack.broker.bootstrap, stack.redis.url)
        elapsed = time.monotonic() - started
        ref = await assert_matches_reference(
            current, stack.broker.bootstrap, stack.redis.url, stack.redis.url, model, events
        )
        current.stop()
        print(
            f"OK: {len(events)} events, {len(ref.scores)} leads equal to the reference (1e-9), "
            f"{len(ref.handoff_ids)} handoffs each exactly once, {done_kills} SIGKILLs, {elapsed:.0f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leads", type=int, default=10_500)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    asyncio.run(soak(args.leads, args.kills, args.seed))


if __name__ == "__main__":
    main()
