"""The client of the Redis Cluster that stock lives on when STOCK_REDIS_CLUSTER names one
(inventory.redis_counts.redis_client; docs/redis-cluster.md).

One client per process: a forked worker (gunicorn, Celery) makes its own, since the parent's
connections are not its to use.
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

from django.conf import settings
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

_clients: dict[tuple[int, tuple[str, ...]], RedisCluster] = {}


def stock_cluster_client() -> RedisCluster:
    nodes = tuple(settings.STOCK_REDIS_CLUSTER_NODES)
    key = (os.getpid(), nodes)
    client = _clients.get(key)
    if client is None:
        client = _clients[key] = _connect(nodes)
    return client


def _connect(urls: tuple[str, ...]) -> RedisCluster:
    parts = [urlsplit(url) for url in urls]
    password = next((unquote(p.password) for p in parts if p.password), None)
    return RedisCluster(
        startup_nodes=[ClusterNode(p.hostname, p.port or 6379) for p in parts],
        password=password,
        socket_connect_timeout=2,
        socket_timeout=2,
        max_connections=200,
        # A failover: connection errors and CLUSTERDOWN make the client read the slots again and
        # retry, with backoff, for about as long as a replica takes to be promoted (seconds).
        retry=Retry(backoff=ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=6),
    )


def close_stock_cluster_clients() -> None:
    """Tests that stop a cluster: the next call connects anew."""
    for client in _clients.values():
        client.close()
    _clients.clear()
