"""A real 3-master Redis Cluster on loopback ports, for the tests."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from leadpulse.dev.embedded import RedisServer
from tests.support.ports import free_port_and


class LocalCluster:
    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self.nodes = []
        for i in range(masters):
            folder = workdir / f"node{i}"
            folder.mkdir(parents=True, exist_ok=True)
            port = free_port_and(10000)  # its cluster bus port
            self.nodes.append(RedisServer(folder, port=port, appendonly=False, extra=(
                "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", "15000",  # a node stalled 5 s on a busy CI box is not a failure
            )))

    def start(self) -> LocalCluster:
        try:
            return self._start()
        except BaseException:
            self.stop()  # nodes already up must not outlive a failed start
            raise

    def _start(self) -> LocalCluster:
        for node in self.nodes:
            node.start()
        subprocess.run(
            ["redis-cli", "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in self.nodes],
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        # Every node judges cluster_state on its own, from what gossip has told it so far: one
        # node saying ok while another still says fail is what made a first command answer
        # CLUSTERDOWN. Ready means every node is ok, serves all slots and knows every master.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(self._node_ready(node.port) for node in self.nodes):
                return self
            time.sleep(0.2)
        raise RuntimeError("the cluster did not reach cluster_state:ok on every node")

    def _node_ready(self, port: int) -> bool:
        out = subprocess.run(["redis-cli", "-p", str(port), "cluster", "info"],
                             check=False, capture_output=True, text=True, timeout=10).stdout
        info = dict(line.split(":", 1) for line in out.split() if ":" in line)
        return (info.get("cluster_state") == "ok"
                and info.get("cluster_slots_ok") == "16384"
                and info.get("cluster_known_nodes") == str(len(self.nodes)))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
