"""Stock on a real Redis Cluster (three masters, each with a replica: the `stock_on_cluster`
fixture). The race, the sellout and an order across shards run in test_shards.py on the cluster
too; here what only a cluster has: purchase limits and rate counters on two kinds of Redis, and a
master killed while orders are placed, its replica promoted."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter

import pytest
import redis
from django.db import connection
from django.db.models import Sum
from redis.crc import key_slot

from accounts.models import Account
from devtools import redis_cluster as devcluster
from devtools.testing import client_for, make_product, make_user, order_body, race
from inventory import redis_counts
from inventory.errors import ReservationLost
from inventory.reconciliation import inventory_reconcile, on_hand_by_product
from inventory.reservations import stock_epoch
from inventory.services import product_purchase_limit_set, stock_record_sale, stock_reserve
from inventory.shards import shard_of
from orders.models import Order, OrderItem, OrderStatus

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def slot_of(shard) -> int:
    return key_slot(shard.tag.encode())


def test_one_buyers_parallel_orders_never_pass_a_purchase_limit_held_on_another_master(stock_on_cluster):
    limited, free = make_product(price=10), make_product(price=10)
    assert devcluster.master_of_slot(stock_on_cluster, slot_of(shard_of(limited.id))) != devcluster.master_of_slot(
        stock_on_cluster, slot_of(shard_of(free.id))
    )
    product_purchase_limit_set(product=limited, limit=2)
    buyer = make_user(balance=10_000)
    client = client_for(buyer)

    answers = race(8, lambda _: client.post("/api/v1/orders", order_body(buyer, (free, 1), (limited, 1)),
                                            format="json"))  # fmt: skip

    assert Counter(a.status_code for a in answers) == {201: 2, 409: 6}
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 409} == {"PURCHASE_LIMIT_REACHED"}
    assert redis_counts.holdings(product_id=limited.id) == {buyer.id: 2}
    # The refused orders held nothing on the other master either: what `free` lost, two orders paid.
    assert redis_counts.available(product_ids=[free.id, limited.id]) == {free.id: 98, limited.id: 98}
    assert inventory_reconcile(grace_seconds=0).drifted == []


def test_the_rate_limit_counts_on_the_one_redis_while_stock_is_on_the_cluster(stock_on_cluster, settings):
    settings.ORDER_RATE_LIMIT_PER_USER = 3
    settings.ORDER_RATE_LIMIT_WINDOW_SECONDS = 600
    a, b = make_product(price=1), make_product(price=1)
    buyer = make_user(balance=1_000)
    client = client_for(buyer)

    codes = [client.post("/api/v1/orders", order_body(buyer, (a, 1), (b, 1)), format="json").status_code
             for _ in range(5)]  # fmt: skip

    assert codes == [201, 201, 201, 429, 429]
    assert redis_counts.available(product_ids=[a.id, b.id]) == {a.id: 97, b.id: 97}  # the refused reserved nothing


def test_a_master_killed_mid_sale_loses_no_unit_and_its_old_reservations_are_fenced(stock_on_cluster, settings):
    """Orders across all three masters go on while the master of one shard is SIGKILLed; its replica
    takes over (node timeout 1 s). The replica may lack the master's last writes (replication is
    asynchronous), so the shard counts as not loaded until reconciliation has rebuilt it from the
    database under a new epoch: orders on it meanwhile get 503, a reservation made before the
    failover can no longer be sold, and the books balance to the unit."""
    settings.ORDER_RATE_LIMIT_PER_USER = 1_000_000  # four buyers ordering as fast as they can
    products = [make_product(price=10, stock_quantity=10_000) for _ in range(3)]
    lost = shard_of(products[0].id)
    assert len({shard_of(p.id) for p in products}) == 3
    buyers = [make_user(balance=100_000) for _ in range(4)]
    before_the_failover = stock_reserve(quantities={products[0].id: 2})  # its order has not committed yet
    epoch_before = stock_epoch(lost)
    answers: list[tuple[float, int]] = []
    stop = threading.Event()

    def buyer_loop(i: int) -> None:
        client = client_for(buyers[i])
        while not stop.is_set():
            body = order_body(buyers[i], (products[i % 3], 1), (products[(i + 1) % 3], 1))
            answers.append((time.monotonic(), client.post("/api/v1/orders", body, format="json").status_code))
        connection.close()

    def reconciler_loop() -> None:  # what Celery beat does every few seconds
        while not stop.is_set():
            with contextlib.suppress(redis.RedisError, redis.exceptions.RedisClusterException):
                inventory_reconcile()  # a run that meets the dead master fails; the next one goes on
            stop.wait(0.5)
        connection.close()

    threads = [threading.Thread(target=buyer_loop, args=(i,)) for i in range(len(buyers))]
    threads.append(threading.Thread(target=reconciler_loop))
    for thread in threads:
        thread.start()
    try:
        time.sleep(2)
        killed = devcluster.kill_master(stock_on_cluster, slot=slot_of(lost))
        promoted_at = time.monotonic()
        devcluster.start_node(stock_on_cluster, killed)  # it comes back as its old replica's replica
        deadline = time.monotonic() + 60
        while not any(at > promoted_at and code == 201 for at, code in answers[-50:]) or not redis_counts.is_loaded(
            lost
        ):
            assert time.monotonic() < deadline, "orders did not resume after the failover"
            time.sleep(0.2)
        time.sleep(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)

    codes = Counter(code for _, code in answers)
    assert set(codes) <= {201, 503}, codes  # never a 500; 503 only while the shard was away
    assert codes[201] > 0 and any(at > promoted_at and code == 201 for at, code in answers)
    assert stock_epoch(lost) > epoch_before
    with pytest.raises(ReservationLost):  # made on the old master: fenced, whatever the replica got
        stock_record_sale(reservation=before_the_failover, quantities={products[0].id: 2}, reference="late")
    # The books: every 201 a paid order, stock gone exactly by the units paid, money by the totals.
    assert Order.objects.filter(status=OrderStatus.PAID).count() == codes[201] == Order.objects.count()
    inventory_reconcile(grace_seconds=0)
    report = inventory_reconcile(grace_seconds=0)
    assert report.drifted == []
    paid = OrderItem.objects.values("product_id").annotate(units=Sum("quantity"))
    sold = {row["product_id"]: row["units"] for row in paid}
    assert on_hand_by_product() == {p.id: 10_000 - sold.get(p.id, 0) for p in products}
    assert redis_counts.available(product_ids=[p.id for p in products]) == on_hand_by_product()
    spent = sum(
        100_000 - balance for balance in Account.objects.filter(user__in=buyers).values_list("balance", flat=True)
    )
    assert spent == Order.objects.aggregate(total=Sum("total_amount"))["total"]


def test_an_order_whose_second_shard_has_no_node_gives_back_what_its_first_shard_held(stock_on_cluster):
    a, b = sorted((make_product(price=1, stock_quantity=10) for _ in range(2)), key=lambda p: shard_of(p.id).index)
    assert shard_of(a.id).index < shard_of(b.id).index  # a's shard is reserved first
    killed = devcluster.kill_slot(stock_on_cluster, slot=slot_of(shard_of(b.id)))  # b's master and replica
    try:
        with pytest.raises(redis_counts.REDIS_AWAY):
            stock_reserve(quantities={a.id: 3, b.id: 1})

        assert redis_counts.available(product_ids=[a.id]) == {a.id: 10}  # a's shard still served, given back
        assert redis_counts.redis_client().zcard(shard_of(a.id).reservations_key) == 0
    finally:
        for port in killed:
            devcluster.start_node(stock_on_cluster, port)
        devcluster.start(stock_on_cluster)
