"""`leadpulse bench` smoke run: the command works end to end and its numbers are sane.

Benchmarks are not timed tests: nothing here asserts a speed. It checks that every stage ran,
that the numbers are non-zero, and that the naive baseline and LeadPulse processed the same
events and reached the same final scores (as do one worker and two workers with a rebalance).
"""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

pytestmark = pytest.mark.integration

EVENTS = 2000


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    workdir = tmp_path_factory.mktemp("bench")
    command = [
        sys.executable, "-c", "from leadpulse.bench import bench; bench()",
        "--events", str(EVENTS), "--leads", "200", "--rate", "400", "--latency-seconds", "3",
        "--memory-leads", "2000", "--data-dir", str(workdir), "--json",
    ]
    done = subprocess.run(command, check=False, capture_output=True, timeout=280, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-4000:]
    return orjson.loads(done.stdout)


def test_every_row_processed_the_event_set_at_a_non_zero_rate(report: dict) -> None:
    assert report["events"] == EVENTS
    assert 0 < report["leads"] <= 200
    names = [row["name"] for row in report["rows"]]
    assert len(names) == 4 and names[2].startswith("baseline") and names[3].startswith("LeadPulse")
    for row in report["rows"]:
        assert row["events"] > 0 and row["events_per_s"] > 0 and row["seconds"] > 0, row
        assert row["ratio_to_baseline"] > 0, row
    baseline, leadpulse = report["rows"][2], report["rows"][3]
    assert baseline["cpu_s_per_million"] > 0 and leadpulse["cpu_s_per_million"] > 0
    assert baseline["ratio_to_baseline"] == 1.0
    assert "LeadPulse worker" in report["table"]


def test_baseline_and_leadpulse_processed_the_same_events_and_agree(report: dict) -> None:
    checks = report["checks"]
    assert checks["baseline_events_done"] == checks["leadpulse_events_done"] == EVENTS
    assert checks["leads_compared"] == report["leads"]
    assert checks["baseline_vs_leadpulse_leads_differing"] == 0, checks


def test_two_workers_with_a_rebalance_end_where_one_worker_does(report: dict) -> None:
    two = report["two_workers"]
    assert sum(two["processed_by_each"]) >= EVENTS
    assert two["leads_differing_from_one_worker"] == 0, two


def test_latency_memory_and_rss_are_measured(report: dict) -> None:
    latency = report["latency"]
    assert latency["timed_handoffs"] > 0
    assert 0 < latency["p50_ms"] <= latency["p99_ms"]
    memory = report["redis_memory"]
    assert memory["at_leads"] >= 2000
    assert memory["state_bytes_per_lead"] > 0 and memory["dedup_bytes_per_lead"] > 0
    assert report["worker_memory"]["peak_rss_mib"] > 0
    assert report["machine"]["nproc"] >= 1
