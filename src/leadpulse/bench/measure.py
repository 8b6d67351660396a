"""What the bench measures processes with: CPU and memory from the kernel, a process's own
account of its work (`Work`), and other processes' CPU over that span (`CpuTrace`)."""

from __future__ import annotations

import bisect
import contextlib
import os
import platform
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads, ended ones too) so far: read from its
    CPU-time clock (what clock_getcpuclockid(3) names), to the nanosecond, so that a smoke run's
    few milliseconds of broker or Redis CPU are measured; /proc's 10 ms clock ticks otherwise."""
    with contextlib.suppress(OSError, OverflowError):
        return time.clock_gettime(((~pid) << 3) | 2)  # Linux: MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def runqueue_wait(pid: int) -> float:
    """Seconds the process's threads have spent runnable but waiting for a CPU (the second field
    of /proc/<pid>/task/<tid>/schedstat, summed): how much a busy machine held it back. Threads
    that ended are not counted; 0.0 where unknown."""
    total = 0.0
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1]) / 1e9
    return total


def memory(pid: int) -> tuple[int, int]:
    """(RSS, peak RSS) of a process in bytes."""
    rss = peak = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    return rss, peak


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "nproc": os.cpu_count(), "cpu": model, "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(), "kernel": platform.release(),
    }


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


@dataclass
class Work:
    """A process's own account of its work: the events it handled, and its wall clock (Unix time)
    and CPU seconds when it received the first of them and when it finished the last.

    Rows are measured from this, not from samples taken from outside: a run shorter than any
    poll interval still has its span, and the CPU of the span is the work's alone (not start-up,
    not idle time before or after). The span opens before the first event is handled, so one
    batch of N events measures N events, not N − 1."""

    events: int = 0
    start: float = 0.0
    end: float = 0.0
    cpu_start: float = 0.0
    cpu_end: float = 0.0

    @property
    def seconds(self) -> float:
        return self.end - self.start if self.events and self.end > self.start else 0.0

    @property
    def cpu(self) -> float:
        return max(0.0, self.cpu_end - self.cpu_start) if self.events else 0.0


class CpuTrace:
    """The CPU seconds of other processes (Redis, the broker), sampled on the wall clock every
    `interval` by a thread, so that their CPU over a span a process reports itself (`Work`) can
    be read afterwards, however short the span: between the last sample before it and the first
    after. That never misses work done in the span and adds at most an interval of each one's
    idle CPU at either end (interpolating would hide part of a burst shorter than an interval)."""

    def __init__(self, pids: Sequence[int], interval: float = 0.05) -> None:
        self.pids = tuple(pids)
        self.interval = interval
        self.times: list[float] = []
        self.cpus: list[tuple[float, ...]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-trace", daemon=True)

    def _sample(self) -> None:
        self.times.append(time.time())
        self.cpus.append(tuple(cpu_seconds(pid) for pid in self.pids))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> CpuTrace:
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        """The last sample, after the span's end; safe to call again."""
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
            self._sample()

    def __enter__(self) -> CpuTrace:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def between(self, start: float, end: float) -> tuple[float, ...]:
        i = max(0, bisect.bisect_right(self.times, start) - 1)
        j = min(len(self.times) - 1, bisect.bisect_left(self.times, end))
        return tuple(max(0.0, b - a) for a, b in zip(self.cpus[i], self.cpus[j]))
