"""docs/architecture.md's module map names every module of src/leadpulse, in its package, and
nothing that is gone; its event diagram names functions that exist. Every Kafka producer is made
in one place."""

from __future__ import annotations

import re
from pathlib import Path


def module_map(doc: str) -> set[str]:
    """The modules the map's first code block lists, as paths under src/leadpulse/."""
    block = doc.split("```\nsrc/leadpulse/\n", 1)[1].split("```", 1)[0]
    found: set[str] = set()
    package = ""
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        entry = line.split()[0]
        if indent == 2:
            package = entry if entry.endswith("/") and not entry.startswith("lua/") else ""
            if entry.endswith(".py"):
                found.add(entry)
        elif indent == 4 and package:  # "name.py  what it is", or "a.py, b.py  what they are"
            names = re.split(r"\s{2,}", line.strip())[0]
            found.update(package + name for name in re.findall(r"\w+\.py", names))
    return found


def test_the_module_map_names_every_module_and_only_those(repo_root: Path) -> None:
    src = repo_root / "src" / "leadpulse"
    modules = {p.relative_to(src).as_posix() for p in src.rglob("*.py")
               if p.name != "__init__.py" and "__pycache__" not in p.parts}
    listed = module_map((repo_root / "docs" / "architecture.md").read_text())
    assert sorted(modules - listed) == [], "missing from docs/architecture.md's module map"
    assert sorted(listed - modules) == [], "in docs/architecture.md's module map, but not in src/leadpulse"


def test_the_event_diagram_names_functions_that_exist(repo_root: Path) -> None:
    doc = (repo_root / "docs" / "architecture.md").read_text()
    diagram = doc.split("## An event's way from topic to handoff", 1)[1].split("```", 2)[1]
    source = "\n".join(p.read_text() for p in (repo_root / "src" / "leadpulse").rglob("*.py"))
    classes = "ScoringService|Processor|LeadStore|Scripts|Scorer|Gate|Sweeper|Transition"
    named = set(re.findall(rf"\b(?:{classes})\.(_?[a-z][a-z_]+)\b", diagram))
    named |= set(re.findall(r"\b(?:events|handoff|isolate|kafka)\.([a-z_]+)\(", diagram))
    assert len(named) > 15, named
    missing = [name for name in sorted(named) if not re.search(rf"def {name}\b", source)]
    assert missing == []


def test_every_producer_is_made_by_kafka_started_producer(repo_root: Path) -> None:
    # A bare aiokafka producer forgets the leaders of topics it knew at start once it writes to a
    # newer one (tests/test_producer_topics.py): 40-second stalls. kafka.py is where it is made.
    made = [f"{p.relative_to(repo_root)}:{n}" for root in ("src", "examples")
            for p in (repo_root / root).rglob("*.py") if p.name != "kafka.py"
            for n, line in enumerate(p.read_text().splitlines(), 1) if "AIOKafkaProducer(" in line]
    assert made == []
