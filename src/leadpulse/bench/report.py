"""The bench's results: one `Throughput` row per throughput stage, the `Report` of a run (what
`--json` prints), and the table `leadpulse bench` prints."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .measure import CpuTrace, Work

BASELINE = "baseline: naive Faust agent (as Faust's docs)"
BASELINE_VARIANT = "baseline variant: stream.events(), log WARNING"
LEADPULSE = "LeadPulse worker"
SHADOW = "LeadPulse worker + shadow model"


@dataclass
class Throughput:
    name: str
    events: int = 0
    seconds: float = 0.0
    cpu: float = 0.0  # CPU seconds of the process under test
    redis_cpu: float = 0.0
    broker_cpu: float = 0.0
    complete: bool = True  # False: stopped by its time box
    note: str = ""
    runs: list[float] = field(default_factory=list)  # every run's events/s, when the row is a median

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def per_million(self, cpu: float) -> float:
        return cpu / self.events * 1e6 if self.events else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self), "events_per_s": round(self.rate, 1),
            "cpu_s_per_million": round(self.per_million(self.cpu), 2),
            "redis_cpu_s_per_million": round(self.per_million(self.redis_cpu), 2),
            "broker_cpu_s_per_million": round(self.per_million(self.broker_cpu), 2),
        }


def measured(name: str, work: Work, trace: CpuTrace, note: str = "", complete: bool = True) -> Throughput:
    """A row from a process's own account of its work; Redis and the broker over the same span."""
    redis_cpu, broker_cpu = trace.between(work.start, work.end) if work.events else (0.0, 0.0)
    return Throughput(name, work.events, work.seconds, cpu=work.cpu, redis_cpu=redis_cpu, broker_cpu=broker_cpu,
                      complete=complete and work.events > 0, note=note)


@dataclass
class Report:
    machine: dict[str, Any]
    command: str
    events: int = 0
    leads: int = 0
    journeys: int = 0
    load_before: float = 0.0
    load_after: float = 0.0
    produce: dict[str, Any] = field(default_factory=dict)
    rows: list[Throughput] = field(default_factory=list)
    latency: dict[str, Any] = field(default_factory=dict)
    worker_memory: dict[str, Any] = field(default_factory=dict)
    redis_memory: dict[str, Any] = field(default_factory=dict)
    two_workers: dict[str, Any] = field(default_factory=dict)
    rss_soak: dict[str, Any] = field(default_factory=dict)  # stage "rss", rss.py
    checks: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def row(self, name: str) -> Throughput | None:
        return next((r for r in self.rows if r.name == name), None)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        baseline = self.row(BASELINE)
        out["rows"] = []
        for r in self.rows:
            d = r.as_dict()
            d["ratio_to_baseline"] = round(r.rate / baseline.rate, 2) if baseline and baseline.rate else None
            out["rows"].append(d)
        return out


def _pct(share: float | None) -> str:
    return "–" if share is None else f"{share * 100:.0f} %"


def _gap(a: float | None, b: float | None) -> str:
    return "–" if a is None or b is None else f"{a - b:,.1f} ms"


def render(report: Report) -> str:
    d = report.as_dict()
    lines = []
    m = report.machine
    if not report.events and report.rss_soak:
        lines.append("LeadPulse bench — the RSS soak alone (stage rss)")
    else:
        lines.append(f"LeadPulse bench — {report.events:,} events touching {report.leads:,} leads "
                     f"(the first events, in time order, of {report.journeys:,} leads' journeys)")
    lines.append(f"machine: {m['nproc']} × {m['cpu']}, {m['ram_gib']} GiB RAM, Python {m['python']}; "
                 f"broker and Redis on the same machine; load average {report.load_before:.2f} before, {report.load_after:.2f} after")
    lines.append("")
    header = f"{'':48} {'events/s':>10} {'CPU s/M':>9} {'× baseline':>10} {'Redis CPU s/M':>14} {'broker CPU s/M':>15}"
    if d["rows"]:
        lines.append(header)
        lines.append("-" * len(header))
    for r in d["rows"]:
        ratio = f"{r['ratio_to_baseline']:.1f}×" if r["ratio_to_baseline"] else "–"
        lines.append(f"{r['name']:48} {r['events_per_s']:>10,.0f} {r['cpu_s_per_million']:>9.1f} {ratio:>10} "
                     f"{r['redis_cpu_s_per_million']:>14.1f} {r['broker_cpu_s_per_million']:>15.1f}")
    for r in d["rows"]:
        if r["note"]:
            lines.append(f"  {r['name']}: {r['note']}")
    lines.append("")
    if report.latency:
        lat = report.latency
        lines.append(f"latency occurred_at → handoff record at {lat['offered_events_per_s']:,.0f} events/s offered: "
                     f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms (max {lat['max_ms']} ms; "
                     f"{lat['timed_handoffs']} handoffs timed; worker CPU {_pct(lat['worker_cpu_share'])} while it worked)")
        if lat.get("to_worker_send"):
            a, b = lat["to_worker_send"], lat["worker_send_to_read"]
            lines.append(f"  split at the handoff record's timestamp: occurred_at → worker's send p50 {a['p50_ms']} ms, "
                         f"p99 {a['p99_ms']} ms; send → read p50 {b['p50_ms']} ms, p99 {b['p99_ms']} ms")
        if (b := lat.get("batches")) and b["mean_ms"]:
            lines.append(f"  the worker's {b['count']:,} batches (mean {b['mean_events']} events), mean time per batch: "
                         + ", ".join(f"{step} {ms} ms" for step, ms in b["mean_ms"].items())
                         + f"; the apply stage busy {_pct(b['apply_busy_share'])} of the run; "
                         f"worker CPU {b['worker_cpu_ms_per_batch']} ms per batch")
        if lat.get("runqueue_wait_share"):
            lines.append("  runnable but waiting for a CPU, share of the run: "
                         + ", ".join(f"{k} {_pct(v)}" for k, v in lat["runqueue_wait_share"].items()))
        if lat.get("ceiling"):
            c = lat["ceiling"]
            lines.append(f"latency ceiling: raw aiokafka produce (acks=all, linger {c['linger_ms']} ms) → getmany "
                         f"(fetch wait {c['fetch_max_wait_ms']} ms), same broker, {c['offered_per_s']:,.0f} msgs/s: "
                         f"p50 {c['p50_ms']} ms, p99 {c['p99_ms']} ms (max {c['max_ms']} ms); "
                         f"LeadPulse p99 − ceiling p99 = {_gap(lat['p99_ms'], c['p99_ms'])}")
    if report.worker_memory:
        wm = report.worker_memory
        at = [wm[k] for k in ("rss_at_10pct_mib", "rss_at_50pct_mib", "rss_at_end_mib")]
        lines.append(f"worker RSS: peak {wm['peak_rss_mib']} MiB; at 10 % / 50 % / 100 % of {wm['events']:,} events: "
                     + " / ".join("–" if x is None else f"{x}" for x in at) + " MiB"
                     + (" (–: no poll of the worker fell in that tenth of the run)" if None in at else ""))
    if report.redis_memory:
        rm = report.redis_memory
        lines.append(f"Redis per lead at {rm['at_leads']:,} leads: state {rm['state_bytes_per_lead']:,.0f} B "
                     f"+ indexes {rm['index_bytes_per_lead']:,.0f} B; dedup window {rm['dedup_bytes_per_lead']:,.0f} B "
                     f"({rm['dedup_bytes_per_event']:.0f} B per event kept); replay logs {rm['replay_bytes_per_lead']:,.0f} B "
                     f"({rm['replay_share'] * 100:.0f} % of leads), traits {rm['traits_bytes_per_lead']:,.0f} B "
                     f"({rm['traits_share'] * 100:.0f} % of leads) — MEMORY USAGE state {rm['memory_usage_state_bytes']:,.0f} B, "
                     f"value {rm['state_value_bytes_mean']:,.0f} B, encodings {rm['state_encodings']}")
    if report.two_workers:
        tw = report.two_workers
        lines.append(f"two workers, one group, second started after {tw['second_started_after_events']:,} events: "
                     f"processed {tw['processed_by_each']} "
                     f"(partitions assigned over time {tw['assignments']}), {tw['replayed_after_rebalance']} replayed, "
                     f"leads differing from one worker: {tw.get('leads_differing_from_one_worker', 'n/a')}")
    if report.rss_soak:
        lines.append(_rss_line(report.rss_soak))
    if report.checks:
        lines.append(f"checks: {report.checks}")
    lines.append(f"command: {report.command}   ({report.seconds:.0f} s)")
    return "\n".join(lines)


def _rss_line(r: dict[str, Any]) -> str:
    """The rss stage in one line of the table."""
    s = r["series"]
    at = " / ".join(f"{x['worker_rss_mib']:g}" for x in s)
    capped = (f"ids recycled past {r['max_leads']:,} leads (after {r['leads_recycled_after_events']:,} events)"
              if r["leads_recycled_after_events"] else f"cap of {r['max_leads']:,} not reached")
    if r.get("worker_rss_warm_from_pct") is None:
        warm = "the worker's bounded caches were not yet full at the end: no warm part"
    else:
        warm = (f"warm (every bounded cache full) from {r['worker_rss_warm_from_pct']} %: "
                f"{r['worker_rss_warm_min_mib']}–{r['worker_rss_warm_max_mib']} MiB, spread "
                f"{r['worker_rss_warm_spread'] * 100:.1f} %")
    return (f"worker RSS over {r['processed']:,} streamed events ({r['leads']:,} leads, {capped}): "
            f"{r['worker_rss_min_mib']}–{r['worker_rss_max_mib']} MiB at 10 %..100 %, whole-run spread "
            f"{r['worker_rss_spread'] * 100:.1f} % (goal ± 10 %) [{at}]; {warm}; {r['events_per_s']:,.0f} events/s "
            f"(producer on the same cores); Redis used {r['redis_used_start_mib']:,.0f} → {r['redis_used_end_mib']:,.0f} MiB, "
            f"broker RSS peak {r['broker_peak_rss_mib']:,.0f} MiB")
