"""The asynchronous order: 202 now, payment by a real settler process, events to a Redis Stream."""

from __future__ import annotations

import pytest

from accounts.models import Account
from accounts.selectors import ledger_balance
from coupons.models import Coupon
from devtools.testing import (
    Settler,
    client_for,
    make_product,
    make_user,
    order_body,
    race,
    run_in_django_process,
    settlement_batch_in_flight,
    wait_for,
)
from inventory import redis_counts
from inventory.reconciliation import inventory_reconcile, on_hand_by_product
from orders import events, sales_counter
from orders.models import Order, OrderEvent, OrderStatus
from orders.services import OrderLine, order_place, orders_expire_pending
from orders.settlement import orders_settle_batch
from payments.models import Payment

pytestmark = [
    pytest.mark.usefixtures("database_intake"),  # the database's asynchronous path (the intake: test_intake.py)
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
]

ASYNC = {"HTTP_PREFER": "respond-async"}


@pytest.fixture
def settler():
    started = Settler()
    yield started
    started.stop()


def _status(order_id: int) -> str:
    return Order.objects.values_list("status", flat=True).get(pk=order_id)


def _final(order_id: int, timeout: float = 60) -> str:
    return wait_for(
        lambda: _status(order_id) in (OrderStatus.PAID, OrderStatus.CANCELLED) and _status(order_id),
        timeout=timeout,
        what=f"order {order_id} to be paid or cancelled",
    )


def test_an_async_order_answers_202_then_the_worker_pays_it_and_progress_shows_the_steps(settler):
    user = make_user(balance=1_000)
    product = make_product(price=100, stock_quantity=10)
    client = client_for(user)

    response = client.post("/api/v1/orders", order_body(user, (product, 3)), format="json", **ASYNC)

    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "PENDING_PAYMENT" and body["paidAmount"] == 0
    assert response.headers["Location"] == f"/api/v1/orders/{body['orderId']}"
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 7}  # reserved at once
    assert _final(body["orderId"]) == "PAID"
    detail = client.get(response.headers["Location"]).json()
    assert detail["paidAmount"] == 300
    assert [step["step"] for step in detail["progress"]] == ["reserved", "paying", "paid"]
    assert Account.objects.get(user=user).balance == 700 == ledger_balance(user_id=user.id)


def test_a_payment_that_fails_gives_back_stock_and_coupon(settler):
    user = make_user(balance=50)
    product = make_product(price=100, stock_quantity=10)
    Coupon.objects.create(code="ONE", kind=Coupon.Kind.FIXED, value=10, usage_limit=1)
    client = client_for(user)

    response = client.post("/api/v1/orders", order_body(user, (product, 2), coupon="ONE"), format="json", **ASYNC)

    order_id = response.json()["orderId"]
    assert response.status_code == 202
    assert _final(order_id) == "CANCELLED"
    progress = [s["step"] for s in client.get(f"/api/v1/orders/{order_id}").json()["progress"]]
    assert progress == ["reserved", "paying", "failed", "cancelled"]
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 10} == on_hand_by_product()
    assert Coupon.objects.get(code="ONE").times_used == 0
    assert Account.objects.get(user=user).balance == 50
    assert Payment.objects.count() == 0
    assert inventory_reconcile().drifted == []


def test_a_settler_killed_mid_batch_leaves_the_batch_to_the_next_which_charges_each_order_once():
    users = [make_user(balance=1_000) for _ in range(3)]
    product = make_product(price=100, stock_quantity=30)
    placed = [
        order_place(user_id=user.id, lines=[OrderLine(product.id, 2, 100)], asynchronous=True).order for user in users
    ]
    slow = Settler(extra_env={"PAYMENT_GATEWAY_LATENCY_MS": "60000"}, name="slow")
    try:
        wait_for(settlement_batch_in_flight, what="the settler to hold its batch")
    finally:
        slow.kill()  # inside the batch's transaction: claimed, not committed
    assert {_status(order.id) for order in placed} == {"PENDING_PAYMENT"}
    assert {Account.objects.get(user=user).balance for user in users} == {1_000}

    rescuer = Settler(name="rescuer")
    try:
        assert {_final(order.id) for order in placed} == {"PAID"}
    finally:
        rescuer.stop()
    assert Payment.objects.filter(order_id__in=[o.id for o in placed]).count() == 3
    for user in users:
        assert Account.objects.get(user=user).balance == 800 == ledger_balance(user_id=user.id)


def test_settling_from_twenty_threads_at_once_charges_each_order_once():
    user = make_user(balance=1_000)
    product = make_product(price=100, stock_quantity=10)
    placed = [
        order_place(user_id=user.id, lines=[OrderLine(product.id, 1, 100)], asynchronous=True).order for _ in range(5)
    ]

    batches = race(20, lambda _: orders_settle_batch(limit=2))

    assert sorted(oid for batch in batches for oid in batch.paid) == [order.id for order in placed]
    assert Payment.objects.count() == 5
    assert Account.objects.get(user=user).balance == 500 == ledger_balance(user_id=user.id)
    assert OrderEvent.objects.filter(type=events.PAID).count() == 5


def test_an_order_left_unpaid_past_the_timeout_is_cancelled_and_a_late_settler_charges_nothing():
    user = make_user(balance=1_000)
    product = make_product(price=100, stock_quantity=10)
    placed = order_place(user_id=user.id, lines=[OrderLine(product.id, 4, 100)], asynchronous=True)
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 6}

    assert orders_expire_pending(older_than_seconds=3600) == []  # not yet expired
    assert orders_expire_pending(older_than_seconds=0) == [placed.order.id]

    assert _status(placed.order.id) == "CANCELLED"
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 10} == on_hand_by_product()
    assert orders_settle_batch().claimed == 0  # a settler arriving late finds nothing to pay
    assert Payment.objects.count() == 0 and Account.objects.get(user=user).balance == 1_000


RELAY_DIES_AFTER_PUBLISHING = """
    import os
    from orders import events
    from orders.models import OrderEvent

    class Dies:
        def update(self, **kwargs):
            os._exit(9)  # published to the stream, not yet marked as published

    real_filter = OrderEvent.objects.filter
    OrderEvent.objects.filter = lambda *a, **k: Dies() if "id__in" in k else real_filter(*a, **k)
    events.events_relay()
"""


def test_an_event_is_never_lost_when_the_relay_dies_between_publish_and_mark_and_counts_once():
    user = make_user(balance=10_000)
    products = [make_product(price=1, stock_quantity=100) for _ in range(2)]
    for n in range(3):
        order_place(user_id=user.id, lines=[OrderLine(products[n % 2].id, 1 + n, 1)])
    written = OrderEvent.objects.count()

    crashed = run_in_django_process(RELAY_DIES_AFTER_PUBLISHING)

    assert crashed.returncode == 9, crashed.stderr
    assert redis_counts.redis_client().xlen(events.STREAM_KEY) == written
    assert OrderEvent.objects.filter(published_at__isnull=True).count() == written
    sales_counter.consume(block_ms=None)
    assert events.events_relay() == written  # published again: at least once
    assert redis_counts.redis_client().xlen(events.STREAM_KEY) == 2 * written
    sales_counter.consume(block_ms=None)

    assert OrderEvent.objects.filter(published_at__isnull=True).count() == 0
    assert sales_counter.units_sold() == {products[0].id: 1 + 3, products[1].id: 2}


def test_every_status_change_has_its_event():
    user = make_user(balance=1_000)
    product = make_product(price=10, stock_quantity=100)
    paid = order_place(user_id=user.id, lines=[OrderLine(product.id, 1, 10)]).order
    pending = order_place(user_id=user.id, lines=[OrderLine(product.id, 1, 10)], asynchronous=True).order
    client_for(user).post(f"/api/v1/orders/{paid.id}/cancel")
    orders_settle_batch()

    types = lambda order: list(OrderEvent.objects.filter(order=order).order_by("id").values_list("type", flat=True))  # noqa: E731
    assert types(paid) == [events.CREATED, events.PAID, events.CANCELLED]
    assert types(pending) == [events.CREATED, events.PAYMENT_STARTED, events.PAID]
