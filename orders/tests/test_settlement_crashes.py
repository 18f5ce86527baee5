"""A 202 is a promise: after PostgreSQL or Redis crashes, or the web process dies right after
its commit, every accepted order still ends PAID or CANCELLED, charged once, stock and money
conserved (real servers killed for real)."""

from __future__ import annotations

import pytest
from django.test import override_settings

from accounts.models import Account
from accounts.selectors import ledger_balance
from config import local
from devtools.testing import (
    Settler,
    free_port,
    make_product,
    make_user,
    postgres_crashed_mid_batch,
    run_in_django_process,
    start_redis_server,
    wait_for,
)
from inventory import redis_counts
from inventory.reconciliation import inventory_reconcile, on_hand_by_product
from orders.models import Order, OrderStatus
from orders.services import OrderLine, order_place
from orders.settlement import orders_settle_batch
from payments.models import Payment

pytestmark = [
    pytest.mark.usefixtures("database_intake"),  # the database's asynchronous path (the intake: test_intake.py)
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
]

SETTLED = {OrderStatus.PAID, OrderStatus.CANCELLED}


def _place_for(users, product, quantity: int = 1) -> list[Order]:
    return [
        order_place(user_id=u.id, lines=[OrderLine(product.id, quantity, product.price)], asynchronous=True).order
        for u in users
    ]


def _all_settled(orders: list[Order]) -> bool:
    statuses = set(Order.objects.filter(pk__in=[o.id for o in orders]).values_list("status", flat=True))
    return statuses <= SETTLED


@pytest.mark.skipif(
    not local.uses_own_database(),
    reason="restarts PostgreSQL: only the project's own server (DATABASE_URL unset)",
)
def test_postgresql_crashing_mid_batch_loses_no_accepted_order_and_charges_each_once():
    users = [make_user(balance=1_000) for _ in range(10)]
    product = make_product(price=100, stock_quantity=100)
    placed = _place_for(users, product) + _place_for(users, product, quantity=2)
    settler = Settler(extra_env={"PAYMENT_GATEWAY_LATENCY_MS": "400"}, batch_size=5)
    try:
        postgres_crashed_mid_batch()
        wait_for(lambda: _all_settled(placed), timeout=90, what="every accepted order settled")
    finally:
        settler.stop()

    assert "settlement batch failed" in settler.log_path.read_text()  # it did lose a batch
    assert set(Order.objects.values_list("status", flat=True)) == {OrderStatus.PAID}
    assert Payment.objects.count() == 20
    for user in users:
        assert Account.objects.get(user=user).balance == 700 == ledger_balance(user_id=user.id)
    assert on_hand_by_product() == {product.id: 70}


def test_redis_crashing_with_accepted_orders_in_flight_keeps_every_promise(tmp_path, settings):
    port = free_port()
    own_redis = dict(settings.CACHES["default"], LOCATION=f"redis://127.0.0.1:{port}/15")
    process = start_redis_server(port, tmp_path)
    try:
        with override_settings(CACHES={"default": own_redis}):
            payers, short = [make_user(balance=1_000) for _ in range(5)], make_user(balance=10)
            product = make_product(price=100, stock_quantity=50)
            inventory_reconcile()  # stock loaded into our own Redis
            placed = _place_for([*payers, short], product, quantity=2)

            process.kill()  # Redis dies with the orders accepted and not yet paid
            process.wait()
            settler = Settler(extra_env={"REDIS_TEST_URL": own_redis["LOCATION"]})
            try:  # paying needs no Redis; the failed order's units go back to Redis later
                wait_for(lambda: _all_settled(placed), timeout=60, what="every accepted order settled")
            finally:
                settler.stop()

            process = start_redis_server(port, tmp_path)
            redis_counts.redis_client().connection_pool.disconnect()
            assert inventory_reconcile().rebuilt  # another run of the server: rebuilt from the ledger
            assert redis_counts.available(product_ids=[product.id]) == on_hand_by_product() == {product.id: 40}
    finally:
        process.kill()
        process.wait()

    statuses = dict(Order.objects.values_list("id", "status"))
    assert [statuses[o.id] for o in placed] == ["PAID"] * 5 + ["CANCELLED"]
    assert Payment.objects.count() == 5
    assert Account.objects.get(user=short).balance == 10
    assert {Account.objects.get(user=u).balance for u in payers} == {800}


DIES_RIGHT_AFTER_THE_COMMIT = """
    import os
    from orders import services
    from orders.services import OrderLine, order_place

    real_sql_one = services.sql_one

    def commit_then_die(sql, params):
        row = real_sql_one(sql, params)  # the order and its sale are committed (autocommit)
        print(row[0], flush=True)
        os._exit(9)  # the web process dies before its 202 is written

    services.sql_one = commit_then_die
    order_place(user_id={user_id}, lines=[OrderLine({product_id}, 3, 100)], asynchronous=True)
"""


def test_an_order_committed_by_a_process_that_died_before_answering_is_still_paid():
    user = make_user(balance=1_000)
    product = make_product(price=100, stock_quantity=10)

    died = run_in_django_process(DIES_RIGHT_AFTER_THE_COMMIT.format(user_id=user.id, product_id=product.id))

    assert died.returncode == 9, died.stderr
    order = Order.objects.get(pk=int(died.stdout.split()[0]))
    assert order.status == OrderStatus.PENDING_PAYMENT
    assert orders_settle_batch().paid == [order.id]
    assert Account.objects.get(user=user).balance == 700
    assert inventory_reconcile().drifted == []
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 7} == on_hand_by_product()
