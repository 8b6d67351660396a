"""Free loopback ports for services that also bind a second port at a fixed offset."""

from __future__ import annotations

import socket

from leadpulse.dev.embedded import free_port


def free_port_and(offset: int) -> int:
    """A free port p whose partner p + offset is free (and in range) too: a Redis Cluster node's
    bus port (offset 10000), the next worker process of a supervisor (offset 1)."""
    while True:
        port = free_port()
        if port + offset > 65535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        return port
