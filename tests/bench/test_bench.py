"""`leadpulse bench` smoke run: the command works end to end and its numbers are sane.

Benchmarks are not timed tests: nothing here asserts a speed. It checks that every stage ran,
that the numbers are non-zero, and that the naive baseline and LeadPulse processed the same
events and reached the same final scores (as do one worker and two workers with a rebalance).
The rss stage (off by default) runs alone and tiny: every event streamed through the worker,
its RSS and its caches' fill sampled at every tenth. A run of a few events, over before any poll could see it
under way, is measured all the same: rows come from the processes' own account of their work.
"""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from leadpulse.bench.baseline import median_row
from leadpulse.bench.children import Sample
from leadpulse.bench.leadpulse import rss_at
from leadpulse.bench.measure import CpuTrace, Work
from leadpulse.bench.report import Throughput, measured
from leadpulse.bench.rss import warm

integration = pytest.mark.integration
pytestmark = pytest.mark.slow  # each test runs `leadpulse bench` stages: worker processes, tens of seconds

EVENTS = 2000


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    workdir = tmp_path_factory.mktemp("bench")
    command = [
        sys.executable, "-m", "leadpulse.bench",
        "--events", str(EVENTS), "--leads", "200", "--rate", "400", "--latency-seconds", "3",
        "--memory-leads", "2000", "--baseline-runs", "2", "--data-dir", str(workdir), "--json",
    ]
    done = subprocess.run(command, check=False, capture_output=True, timeout=280, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-4000:]
    return orjson.loads(done.stdout)


@integration
def test_every_row_processed_the_event_set_at_a_non_zero_rate(report: dict) -> None:
    assert report["events"] == EVENTS
    assert 0 < report["leads"] <= 200
    names = [row["name"] for row in report["rows"]]
    assert len(names) == 7, names
    assert names[2].startswith("baseline: naive Faust agent (as Faust's docs)")
    assert names[3].startswith("baseline variant") and names[4] == "LeadPulse worker"
    assert names[5] == "LeadPulse worker + shadow model"
    assert names[6] == "LeadPulse worker, 2 processes"
    for row in report["rows"]:
        assert row["events"] > 0 and row["events_per_s"] > 0 and row["seconds"] > 0, row
        assert row["ratio_to_baseline"] > 0, row
    baseline, leadpulse, two = report["rows"][2], report["rows"][4], report["rows"][5]
    assert baseline["cpu_s_per_million"] > 0 and leadpulse["cpu_s_per_million"] > 0 and two["cpu_s_per_million"] > 0
    assert baseline["ratio_to_baseline"] == 1.0
    # the honest baseline is the median of its runs, and every run's rate is reported
    assert len(baseline["runs"]) == 2 and min(baseline["runs"]) <= baseline["events_per_s"] <= max(baseline["runs"])
    assert "LeadPulse worker" in report["table"]


@integration
def test_the_shadow_row_scored_every_event_twice_and_counted_agreement(report: dict) -> None:
    shadow = next(row for row in report["rows"] if row["name"] == "LeadPulse worker + shadow model")
    assert shadow["events"] == EVENTS and shadow["cpu_s_per_million"] > 0
    checks = report["checks"]
    assert checks["shadow_failures"] == 0
    # The shadow's MQL bar (45) is under the live one (60): some decisions are the shadow's alone.
    assert checks["shadow_decisions"].get("shadow_only", 0) > 0, checks
    assert checks["shadow_rate_vs_worker"] > 0 and "shadow_extra_cpu_s_per_million" in checks


@integration
def test_two_worker_processes_processed_the_event_set_and_agree_with_one(report: dict) -> None:
    two = next(row for row in report["rows"] if row["name"] == "LeadPulse worker, 2 processes")
    assert two["events"] == EVENTS
    assert report["checks"]["processes_vs_one_leads_differing"] == 0


@integration
def test_baseline_and_leadpulse_processed_the_same_events_and_agree(report: dict) -> None:
    checks = report["checks"]
    assert checks["baseline_events_done"] == checks["leadpulse_events_done"] == EVENTS
    assert checks["leads_compared"] == report["leads"]
    assert checks["baseline_vs_leadpulse_leads_differing"] == 0, checks


@integration
def test_two_workers_with_a_rebalance_end_where_one_worker_does(report: dict) -> None:
    two = report["two_workers"]
    assert sum(two["processed_by_each"]) >= EVENTS
    assert two["second_started_after_events"] >= EVENTS // 3  # when it started, not a claim of "at 1/3"
    assert two["leads_differing_from_one_worker"] == 0, two


@integration
def test_latency_memory_and_rss_are_measured(report: dict) -> None:
    latency = report["latency"]
    assert latency["timed_handoffs"] > 0
    assert 0 < latency["p50_ms"] <= latency["p99_ms"]
    ceiling = latency["ceiling"]  # raw produce → getmany at the same rate: every message read and timed
    assert ceiling["read"] == ceiling["messages"] > 0
    assert 0 < ceiling["p50_ms"] <= ceiling["p99_ms"] <= ceiling["max_ms"]
    assert "latency ceiling" in report["table"]
    # each handoff's time split at its record's timestamp: the parts add up to the whole per handoff
    inside, outside = latency["to_worker_send"], latency["worker_send_to_read"]
    assert 0 <= inside["p50_ms"] and 0 <= outside["p50_ms"]
    assert inside["max_ms"] <= latency["max_ms"] + 1 and outside["max_ms"] <= latency["max_ms"] + 1  # ms timestamps
    assert "split at the handoff record's timestamp" in report["table"]
    # the worker's own account of its batches: every step timed for each batch it committed
    batches = latency["batches"]
    assert batches["count"] >= 1 and batches["mean_events"] > 0
    assert list(batches["mean_ms"]) == ["prepare", "queued", "apply", "applied", "publish", "commit"]
    assert all(ms >= 0 for ms in batches["mean_ms"].values()) and batches["mean_ms"]["apply"] > 0
    assert 0 < batches["apply_busy_share"] <= 1.05  # the sum of applies within the worker's span
    assert batches["worker_cpu_ms_per_batch"] > 0
    assert "mean time per batch: prepare" in report["table"]
    waits = latency["runqueue_wait_share"]  # how much the machine held each back, from /proc
    assert set(waits) == {"worker", "redis", "broker"} and all(v >= 0 for v in waits.values()), waits
    memory = report["redis_memory"]
    assert memory["at_leads"] >= 2000
    assert memory["state_bytes_per_lead"] > 0 and memory["dedup_bytes_per_lead"] > 0
    assert report["worker_memory"]["peak_rss_mib"] > 0
    assert report["machine"]["nproc"] >= 1


RSS_EVENTS = 3000


@pytest.fixture(scope="module")
def rss_report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The rss stage alone, tiny: events generated and produced while the worker consumes them."""
    workdir = tmp_path_factory.mktemp("bench-rss")
    others = [a for stage in ("ceilings", "baseline", "leadpulse", "shadow", "processes", "memory", "rebalance", "latency")
              for a in ("--skip", stage)]
    command = [
        sys.executable, "-m", "leadpulse.bench",
        "--rss-events", str(RSS_EVENTS), *others, "--data-dir", str(workdir), "--json",
    ]
    done = subprocess.run(command, check=False, capture_output=True, timeout=280, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-4000:]
    return orjson.loads(done.stdout)


@integration
def test_rss_stage_streams_every_event_through_the_worker(rss_report: dict) -> None:
    soak = rss_report["rss_soak"]
    assert soak["events"] == soak["produced"] == soak["processed"] == RSS_EVENTS
    assert 0 < soak["leads"] <= soak["max_leads"] and soak["leads_recycled_after_events"] is None
    assert 0 < soak["ahead_max"] < RSS_EVENTS  # produced while consumed, not all up front
    assert soak["events_per_s"] > 0 and soak["topics_deleted"] is True
    assert rss_report["rows"] == [] and rss_report["events"] == 0  # the other stages were skipped


@integration
def test_rss_stage_samples_the_worker_at_every_tenth(rss_report: dict) -> None:
    soak = rss_report["rss_soak"]
    series = soak["series"]
    assert series and series[-1]["pct"] == 100 and series[-1]["events"] == RSS_EVENTS
    pcts = [s["pct"] for s in series]
    assert pcts == sorted(set(pcts)) and all(p % 10 == 0 and 10 <= p <= 100 for p in pcts)
    for s in series:
        assert s["events"] >= RSS_EVENTS * s["pct"] / 100
        assert 20 < s["worker_rss_mib"] < 2048, s  # a Python worker: tens to hundreds of MiB
        assert s["redis_used_mib"] > 0 and s["broker_rss_mib"] > 0, s
    rss = [s["worker_rss_mib"] for s in series]
    assert soak["worker_rss_min_mib"] == min(rss) and soak["worker_rss_max_mib"] == max(rss)
    assert soak["worker_rss_spread"] == pytest.approx((max(rss) - min(rss)) / min(rss), abs=1e-3)
    assert soak["worker_peak_rss_mib"] >= max(rss)
    assert soak["redis_used_end_mib"] > soak["redis_used_start_mib"]
    assert "worker RSS over 3,000 streamed events" in rss_report["table"]


@integration
def test_rss_stage_samples_how_full_the_worker_caches_are(rss_report: dict) -> None:
    soak = rss_report["rss_soak"]
    for s in soak["series"]:
        assert set(s["caches"]) == {"published_handoffs", "visitor_links"}, s
        for entries, capacity in s["caches"].values():
            assert 0 <= entries <= capacity and capacity >= 1000, s
    last = soak["series"][-1]["caches"]
    assert last["published_handoffs"][0] > 0 and last["visitor_links"][0] > 0  # the stream filled both a little
    # 3,000 events fill neither cache: the run has no warm part, and the table says so
    assert soak["worker_rss_warm_from_pct"] is None and soak["worker_rss_warm_spread"] is None
    assert "bounded caches were not yet full at the end" in rss_report["table"]


def _sample(pct: int, rss: float, published: int, links: int) -> dict:
    return {"pct": pct, "worker_rss_mib": rss,
            "caches": {"published_handoffs": [published, 100], "visitor_links": [links, 50]}}


def test_the_warm_part_starts_at_the_first_sample_with_every_cache_full() -> None:
    series = [_sample(10, 100.0, 40, 10), _sample(20, 150.0, 100, 30), _sample(30, 180.0, 100, 50),
              _sample(40, 190.0, 100, 50), _sample(50, 171.0, 100, 50)]
    w = warm(series)
    assert w["worker_rss_warm_from_pct"] == 30  # published_handoffs full at 20 %, visitor_links only at 30 %
    assert (w["worker_rss_warm_min_mib"], w["worker_rss_warm_max_mib"]) == (171.0, 190.0)
    assert w["worker_rss_warm_spread"] == pytest.approx(19 / 171, abs=1e-4)


def test_a_run_whose_caches_never_fill_has_no_warm_part() -> None:
    assert warm([_sample(10, 100.0, 40, 50), _sample(20, 101.0, 99, 50)])["worker_rss_warm_from_pct"] is None
    assert warm([{"pct": 10, "worker_rss_mib": 90.0, "caches": {}}])["worker_rss_warm_spread"] is None  # not scraped


TINY = 150  # one batch: the worker is done within milliseconds of its first poll, or before it


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The LeadPulse stage alone on a handful of events."""
    workdir = tmp_path_factory.mktemp("bench-tiny")
    others = [a for stage in ("ceilings", "baseline", "shadow", "processes", "memory", "rebalance", "latency")
              for a in ("--skip", stage)]
    command = [
        sys.executable, "-m", "leadpulse.bench",
        "--events", str(TINY), "--leads", "20", *others, "--data-dir", str(workdir), "--json",
    ]
    done = subprocess.run(command, check=False, capture_output=True, timeout=280, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-4000:]
    return orjson.loads(done.stdout)


@integration
def test_a_run_shorter_than_a_poll_is_measured_from_the_worker_itself(tiny_report: dict) -> None:
    [row] = tiny_report["rows"]
    assert row["name"] == "LeadPulse worker" and row["complete"] is True
    assert row["events"] == tiny_report["events"] == tiny_report["checks"]["leadpulse_events_done"] == TINY
    assert row["seconds"] > 0 and row["events_per_s"] > 0, row
    assert row["cpu"] > 0 and row["cpu_s_per_million"] > 0, row
    memory = tiny_report["worker_memory"]
    assert memory["rss_at_end_mib"] > 0 and memory["peak_rss_mib"] >= memory["rss_at_end_mib"]


# --- the arithmetic of a row, without services --------------------------------------------------


def test_a_row_is_the_work_the_process_reports_and_the_cpu_trace_around_it() -> None:
    trace = CpuTrace([os.getpid(), os.getpid()])
    # Redis and the broker as the trace saw them: (wall time, (Redis CPU, broker CPU)).
    trace.times = [100.0, 100.05, 100.10, 100.15]
    trace.cpus = [(1.0, 5.0), (1.0, 5.0), (1.02, 5.01), (1.02, 5.01)]
    work = Work(events=2000, start=100.06, end=100.09, cpu_start=3.0, cpu_end=3.1)
    row = measured("LeadPulse worker", work, trace, "worker CPU")
    assert (row.events, row.complete) == (2000, True)
    assert row.seconds == pytest.approx(0.03) and row.cpu == pytest.approx(0.1)
    assert row.per_million(row.cpu) == pytest.approx(50.0)
    # A burst inside one sampling interval is counted whole: from the sample before to the one after.
    assert (row.redis_cpu, row.broker_cpu) == (pytest.approx(0.02), pytest.approx(0.01))
    idle = measured("baseline", Work(), trace, complete=True)
    assert (idle.events, idle.seconds, idle.cpu, idle.complete) == (0, 0.0, 0.0, False)


def test_rss_at_a_share_of_the_run_needs_a_poll_in_that_tenth() -> None:
    polls = [Sample(0.0, 0, 10), Sample(1.0, 2000, 30)]  # a run over between two polls
    assert rss_at(polls, 0.1, 2000) is None and rss_at(polls, 0.5, 2000) is None
    polls.insert(1, Sample(0.5, 1100, 20))
    assert rss_at(polls, 0.5, 2000) == 20 and rss_at(polls, 0.1, 2000) is None


def test_the_baseline_row_is_its_median_run_with_every_run_reported() -> None:
    runs = [Throughput(f"run {i}", events=n, seconds=10.0, cpu=c) for i, (n, c) in enumerate([(900, 9.0), (3000, 3.0), (1500, 6.0)])]
    row = median_row("baseline", runs)
    assert (row.name, row.events, row.cpu) == ("baseline", 1500, 6.0)
    assert row.runs == [90.0, 300.0, 150.0]
    assert "median of 3 runs" in row.note and "spread 90–300" in row.note
    assert median_row("baseline", runs[:2]).events == 900  # an even count: the lower middle
