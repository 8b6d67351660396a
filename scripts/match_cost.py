"""Rule matching per event (`Scorer.matched`, the hot path's part of the engine) on a realistic mix.

The events are the simulated journeys (`leadpulse.dev.simulate`) with their URLs made to look
like real traffic: a share carry utm parameters, a click id, a fragment, a trailing slash or an
upper-case host (seeded, so every run sees the same set). A second set is the page views alone,
each on a path never seen before (a blog of endless slugs): the worst case for the engine's
pattern memo. Times are CPU time per event, the best of --repeat passes, with the default model.

    python scripts/match_cost.py [--leads 20000] [--repeat 10] [--before OLD_SRC]

--before: the `src` directory of another checkout (e.g. `git worktree add /tmp/before main`,
then `/tmp/before/src`). Its `leadpulse` package is loaded beside this one under another name
and the two are timed in turns in this process, so both see the same machine load.
"""

import argparse
import gc
import importlib
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from leadpulse.dev.simulate import journeys
from leadpulse.engine import Scorer
from leadpulse.events import Event
from leadpulse.model import load_model


def realistic(url: str, rng: random.Random) -> str:
    scheme, _, rest = url.partition("://")
    host, _, path = rest.partition("/")
    path = "/" + path
    if rng.random() < 0.1:
        host = host.upper()
    if path != "/" and rng.random() < 0.2:
        path += "/"
    query = []
    if rng.random() < 0.4:
        query.append(f"utm_source={rng.choice(['google', 'linkedin', 'newsletter'])}&utm_medium=cpc&utm_campaign=q4")
    if rng.random() < 0.15:
        query.append(f"gclid={rng.getrandbits(64):x}")
    out = f"{scheme}://{host}{path}" + ("?" + "&".join(query) if query else "")
    if rng.random() < 0.1:
        out += "#" + rng.choice(["faq", "plans", "top"])
    return out


def event_mix(n_leads: int, seed: int = 7) -> list[Event]:
    rng = random.Random(seed)
    out = []
    for raw in journeys(n_leads, seed=seed):
        props = dict(raw.get("properties") or {})
        if isinstance(props.get("url"), str):
            props["url"] = realistic(props["url"], rng)
        out.append(Event(raw["event_id"], raw["source"], raw["type"], raw["occurred_at"], raw.get("lead_id"),
                         raw.get("anonymous_id"), props, raw.get("traits") or {}))
    return out


def unseen_paths(events: Sequence[Event], seed: int = 3) -> list[Event]:
    rng = random.Random(seed)
    return [e._replace(properties={**e.properties, "url": f"https://Example.com/blog/post-{rng.getrandbits(40):x}/"
                                   f"?utm_source=google&gclid={rng.getrandbits(32):x}"})
            for e in events if e.type == "page_view"]


def _before(src: Path) -> tuple[Callable[[], Any], type]:
    """The other checkout's Scorer factory and Event type, loaded as package `leadpulse_before`."""
    where = Path(tempfile.mkdtemp(prefix="match-cost-"))
    shutil.copytree(src / "leadpulse", where / "leadpulse_before")  # symlinks (schemas) resolved
    sys.path.insert(0, str(where))
    engine = importlib.import_module("leadpulse_before.engine")
    model = importlib.import_module("leadpulse_before.model")
    events = importlib.import_module("leadpulse_before.events")
    default = where / "leadpulse_before" / "default_model.yaml"
    return (lambda: engine.Scorer(model.load_model(default))), events.Event


def cpu_per_event(matched: Callable[[Any], object], events: Sequence[Any]) -> float:
    gc.disable()
    try:
        started = time.process_time()
        for e in events:
            matched(e)
        return (time.process_time() - started) / len(events) * 1e6
    finally:
        gc.enable()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leads", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--before", type=Path, default=None, help="src directory of the checkout to compare with")
    args = parser.parse_args()
    events = event_mix(args.leads)
    sets = {"all events": events, "page views": [e for e in events if e.type == "page_view"],
            "page views, each path unseen": unseen_paths(events)}
    versions: dict[str, tuple[Callable[[], Any], Callable[[Event], Any]]] = {
        "this": (lambda: Scorer(load_model()), lambda e: e)}
    if args.before is not None:
        make, event_type = _before(args.before)
        versions = {"before": (make, lambda e: event_type(*e)), **versions}
    inputs = {(v, name): [convert(e) for e in evs] for v, (_, convert) in versions.items() for name, evs in sets.items()}
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.repeat):
        for name in sets:
            for v, (make, _) in versions.items():
                # a fresh Scorer per pass: the unseen paths must stay unseen
                took = cpu_per_event(make().matched, inputs[(v, name)])
                best[(v, name)] = min(best.get((v, name), float("inf")), took)
    print(f"{len(events)} events of {args.leads} leads' journeys; µs per event, CPU, best of {args.repeat}")
    for name, evs in sets.items():
        cells = "  ".join(f"{v} {best[(v, name)]:6.3f}" for v in versions)
        change = ""
        if "before" in versions:
            change = f"  ({(best[('this', name)] / best[('before', name)] - 1) * 100:+.0f} %)"
        print(f"  {name:<30} ({len(evs):>6})  {cells}{change}")


if __name__ == "__main__":
    main()
