"""`leadpulse worker --processes N`: N worker processes in one consumer group on one host.

One worker process uses one core for its Python (parse, match, pack, handoffs); a host with more
cores runs more of them. They are ordinary members of the same group: the broker splits the
partitions between them, and a child that stops hands its partitions to the others (a
rebalance, as between hosts). Nothing is shared in memory, so each child is `run_worker` in a
fresh interpreter (multiprocessing's spawn start, never fork: a forked asyncio loop, aiokafka
or redis connection is not safe to use), with the parent's settings except the HTTP port:
child i serves /metrics, /healthz and the API on `http_port + i`.

The parent only supervises:
- SIGTERM, SIGINT and SIGHUP are forwarded to every child (the children run in their own
  process group, so a Ctrl-C in a terminal reaches each of them once, through the parent);
  SIGTERM/SIGINT then wait for the children's graceful stops (each commits what it finished).
- A child that exits while the parent is not stopping is restarted after a backoff (1 s,
  doubling to 30 s, back to 1 s after a child ran for a minute); its partitions go to the others
  meanwhile. More than `CRASH_LIMIT` exits within `CRASH_WINDOW_S` is a crash loop (a bad model
  file, Redis refusing credentials): the parent stops every child and exits with status 1, so
  the service manager sees the failure instead of a host quietly running fewer workers.

Why not a process manager (supervisord, circus)? They would do the restarts, but each child would
need its own port and command line written into their configuration, and the settings would be
read N times from N places; this is the standard library's multiprocessing plus the policy above,
and `leadpulse worker` stays one command under systemd or a container runtime.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

from .settings import Settings

log = logging.getLogger("leadpulse.processes")

#: child exits within CRASH_WINDOW_S that make a crash loop
CRASH_LIMIT = 5
CRASH_WINDOW_S = 60.0
BACKOFF_S = (1.0, 30.0)
#: a child that ran this long before exiting starts again at the first backoff
STABLE_S = 60.0
#: how long the parent waits for the children's graceful stop before killing them
STOP_TIMEOUT_S = 30.0


def child_settings(settings: Settings, index: int) -> Settings:
    """Child `index`'s settings: the parent's, on its own HTTP port."""
    port = settings.http_port + index
    if port > 65535:
        raise ValueError(f"--processes: child {index} would listen on port {port}")
    return settings.model_copy(update={"http_port": port})


def _child_main(settings: Settings, index: int) -> None:  # pragma: no cover - runs in a child process
    os.setpgrp()  # signals come from the parent, once (see the module's docstring)
    from .cliopts import configure_logging
    from .model import load_model
    from .worker import run_worker

    configure_logging(settings.log_level)
    logging.getLogger("leadpulse.processes").info("worker process %d (pid %d) on HTTP port %d",
                                                   index, os.getpid(), settings.http_port)
    run_worker(settings, load_model(settings.model))


@dataclass
class _Slot:
    index: int
    proc: BaseProcess | None = None
    started: float = 0.0
    backoff: float = 0.0
    restart_at: float | None = None


@dataclass
class Supervisor:
    settings: Settings
    processes: int
    target: Any = _child_main
    slots: list[_Slot] = field(default_factory=list)
    exits: list[float] = field(default_factory=list)
    stopping: int | None = None  # the signal that asked us to stop
    failed: bool = False
    backoff: tuple[float, float] = BACKOFF_S
    crash_limit: int = CRASH_LIMIT
    crash_window: float = CRASH_WINDOW_S

    def __post_init__(self) -> None:
        if self.processes < 1:
            raise ValueError("--processes must be at least 1")
        for i in range(self.processes):
            child_settings(self.settings, i)  # every port valid before anything starts
        self._context = multiprocessing.get_context("spawn")
        self.slots = [_Slot(i, backoff=self.backoff[0]) for i in range(self.processes)]

    def _start(self, slot: _Slot) -> None:
        proc = self._context.Process(target=self.target, args=(child_settings(self.settings, slot.index), slot.index),
                                     name=f"leadpulse-worker-{slot.index}", daemon=False)
        proc.start()
        slot.proc, slot.started, slot.restart_at = proc, time.monotonic(), None
        log.info("started worker process %d (pid %s)", slot.index, proc.pid)

    def _signal(self, signum: int, _frame: Any) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stopping = signum
        self._forward(signum)

    def _forward(self, signum: int) -> None:
        for slot in self.slots:
            if slot.proc is not None and slot.proc.is_alive() and slot.proc.pid:
                try:
                    os.kill(slot.proc.pid, signum)
                except ProcessLookupError:
                    pass

    def _reap(self, now: float) -> None:
        """Notice children that exited; schedule their restart, or declare a crash loop."""
        for slot in self.slots:
            proc = slot.proc
            if proc is None or proc.is_alive():
                continue
            code = proc.exitcode
            proc.close()
            slot.proc = None
            if self.stopping is not None:
                continue
            self.exits = [t for t in self.exits if now - t < self.crash_window] + [now]
            if len(self.exits) > self.crash_limit:
                log.error("worker process %d exited (status %s): %d exits within %.0f s, a crash loop; "
                          "stopping every worker process", slot.index, code, len(self.exits), self.crash_window)
                self.failed = True
                self.stopping = signal.SIGTERM
                self._forward(signal.SIGTERM)
                return
            if now - slot.started >= STABLE_S:
                slot.backoff = self.backoff[0]
            slot.restart_at = now + slot.backoff
            log.warning("worker process %d exited (status %s); restarting it in %.1f s "
                        "(its partitions go to the other members meanwhile)", slot.index, code, slot.backoff)
            slot.backoff = min(self.backoff[1], slot.backoff * 2)

    def run(self) -> int:
        """Start the children and supervise them until a stop signal or a crash loop; the exit status."""
        previous = {signum: signal.signal(signum, self._signal)
                    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            for slot in self.slots:
                self._start(slot)
            while self.stopping is None:
                now = time.monotonic()
                self._reap(now)
                for slot in self.slots:
                    if slot.proc is None and slot.restart_at is not None and now >= slot.restart_at \
                            and self.stopping is None:
                        self._start(slot)
                time.sleep(0.2)
            self._stop_all()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return 1 if self.failed else 0

    def alive(self) -> list[int]:
        """The pids of the children running now."""
        return [s.proc.pid for s in self.slots if s.proc is not None and s.proc.is_alive() and s.proc.pid]

    def _stop_all(self) -> None:
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for slot in self.slots:
            if slot.proc is None:
                continue
            slot.proc.join(max(0.0, deadline - time.monotonic()))
            if slot.proc.is_alive():
                log.warning("worker process %d did not stop within %.0f s; killing it", slot.index, STOP_TIMEOUT_S)
                slot.proc.kill()
                slot.proc.join()
        log.info("every worker process stopped")
