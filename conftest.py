"""Shared fixtures: real PostgreSQL and Redis (see devtools/pytest_plugin.py)."""

import pytest
from redis.connection import parse_url

from config import local
from inventory import redis_counts
from inventory.reservations import stock_epoch
from inventory.shards import stock_shards
from orders.backlog import payment_backlog_forget


@pytest.fixture(autouse=True)
def clean_redis(request, settings):
    """Every test starts from an empty Redis keyspace of its own (logical db 15), stock loaded
    under the database's stock epoch (a test without the database places no order)."""
    assert parse_url(settings.REDIS_URL).get("db") == settings.TEST_REDIS_DB, (
        "tests never touch the development keyspace"
    )
    client = redis_counts.redis_client()
    client.flushdb()
    if request.node.get_closest_marker("django_db") or {"db", "transactional_db"} & set(request.fixturenames):
        for shard in stock_shards():
            redis_counts.mark_loaded(shard, epoch=stock_epoch(shard))
    payment_backlog_forget()
    yield
    client.flushdb()


@pytest.fixture
def admin_client():
    """A client signed in to the admin as a superuser with make run's admin id and password "pw"
    (in place of pytest-django's fixture of the same name)."""
    from django.test import Client

    from accounts.models import User
    from devtools.testing import password_hash

    admin = User.objects.create_superuser(id=1_000_000, username="admin", password=None)
    admin.password = password_hash("pw")  # the real hash of "pw", made once per session
    admin.save(update_fields=["password"])
    client = Client()
    client.login(username="admin", password="pw")
    return client


@pytest.fixture
def database_intake(settings, monkeypatch):
    """Asynchronous orders accepted by the database (ORDER_ASYNC_INTAKE=database: the request
    writes the order PENDING_PAYMENT), as orders with a coupon or an Idempotency-Key always are:
    for the tests of that path, in this process and in the processes it starts."""
    settings.ORDER_ASYNC_INTAKE = "database"
    monkeypatch.setenv("ORDER_ASYNC_INTAKE", "database")


@pytest.fixture(scope="session")
def redis_cluster():
    """A real Redis Cluster of the tests' own (three masters, each with a replica: devtools/
    redis_cluster.py), on six ports of its own, started once."""
    from devtools import redis_cluster as devcluster

    cluster = devcluster.cluster_for_tests()
    devcluster.remove(cluster)  # a killed master of an earlier run left its nodes.conf
    devcluster.start(cluster)
    yield cluster
    devcluster.remove(cluster)


@pytest.fixture
def stock_on_cluster(settings, clean_redis, redis_cluster):
    """Stock on the tests' Redis Cluster (STOCK_REDIS_CLUSTER) in three shards, one per master,
    each empty and loaded; counters, the intake and Celery stay on the one Redis."""
    from kernel.redis_cluster import close_stock_cluster_clients

    settings.STOCK_REDIS_CLUSTER = "test"
    settings.STOCK_REDIS_CLUSTER_NODES = local.default_redis_cluster_urls(base_port=redis_cluster.base_port)
    settings.STOCK_SHARDS = 3
    client = redis_counts.redis_client()
    client.flushdb()
    for shard in stock_shards():
        redis_counts.mark_loaded(shard, epoch=stock_epoch(shard))
    yield redis_cluster
    redis_counts.redis_client().flushdb()
    close_stock_cluster_clients()


@pytest.fixture(params=["one-redis", "cluster"])
def sharded_stock(request, settings, clean_redis):
    """Stock spread over three shards, each loaded: on the one Redis (STOCK_SHARDS=3), then on the
    tests' Redis Cluster. An order of products with consecutive ids takes holds on several shards
    (inventory/shards.py)."""
    if request.param == "cluster":
        request.getfixturevalue("stock_on_cluster")
        return stock_shards()
    settings.STOCK_SHARDS = 3
    for shard in stock_shards():
        redis_counts.mark_loaded(shard, epoch=stock_epoch(shard))
    return stock_shards()
