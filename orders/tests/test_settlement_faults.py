"""One bad order never stops payment for everyone: a user without an account, an order whose
data breaks a rule at every try (real PostgreSQL, Redis and settler processes)."""

from __future__ import annotations

import pytest

from accounts.models import Account
from devtools.testing import Settler, client_for, make_product, make_user, order_body, wait_for
from inventory import redis_counts
from kernel import metrics
from orders.models import Order, OrderStatus
from orders.services import OrderLine, order_place
from orders.settlement import orders_settle_batch
from payments.models import Payment

pytestmark = [
    pytest.mark.usefixtures("database_intake"),
    pytest.mark.django_db(transaction=True),
]  # the database's asynchronous path


def _place_async(user, product, quantity: int = 1) -> Order:
    lines = [OrderLine(product.id, quantity, product.price)]
    return order_place(user_id=user.id, lines=lines, asynchronous=True).order


def _status(order: Order) -> str:
    return Order.objects.get(pk=order.pk).status


def _settled(result: str) -> float:
    parsed = metrics.samples(metrics.exposition(metrics.multiprocess_registry()).decode())
    return metrics.total(parsed, "shop_settled_orders_total", result=result)


def _order_failures() -> float:
    parsed = metrics.samples(metrics.exposition(metrics.multiprocess_registry()).decode())
    return metrics.total(parsed, "shop_settlement_order_failures_total")


def _without_account(user):
    Account.objects.filter(user_id=user.id).delete()  # as if removed by hand: every new user gets one
    return user


def test_an_order_of_a_user_without_an_account_fails_alone_and_the_rest_of_its_batch_is_paid():
    product = make_product(price=100, stock_quantity=10)
    first, orphan, last = make_user(balance=500), make_user(balance=0), make_user(balance=500)
    placed = [_place_async(first, product), _place_async(orphan, product, quantity=3), _place_async(last, product)]
    _without_account(orphan)

    batch = orders_settle_batch(limit=10)

    assert (batch.paid, batch.cancelled) == ([placed[0].id, placed[2].id], [placed[1].id])
    assert [_status(o) for o in placed] == ["PAID", "CANCELLED", "PAID"]
    assert not Payment.objects.filter(order_id=placed[1].id).exists()
    assert Account.objects.get(user_id=first.id).balance == 400
    wait_for(
        lambda: redis_counts.available(product_ids=[product.id])[product.id] == 8,
        what="the orphan's 3 units back in Redis",
    )


def test_a_synchronous_order_of_a_user_without_an_account_is_refused_with_a_code_and_takes_no_stock():
    product = make_product(price=100, stock_quantity=10)
    user = make_user(balance=0)
    client = client_for(user)
    _without_account(user)

    response = client.post("/api/v1/orders", order_body(user, (product, 2)), format="json")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "ACCOUNT_MISSING"
    assert not Order.objects.exists()
    assert redis_counts.available(product_ids=[product.id])[product.id] == 10


@pytest.mark.slow
def test_a_settler_survives_an_order_that_breaks_every_batch_and_pays_everyone_else():
    """A pending order that already has a payment row (a unique order id every batch that
    takes it violates) used to fail its batch again and again: the settler retried the whole
    batch for ever, and every customer's asynchronous order waited behind it."""
    product = make_product(price=100, stock_quantity=20)
    users = [make_user(balance=500) for _ in range(3)]
    placed = [_place_async(user, product, quantity=2) for user in users]
    poison = placed[1]
    Payment.objects.create(order_id=poison.id, user_id=poison.user_id, amount=1, status=Payment.Status.CAPTURED)
    set_aside_before, failures_before = _settled("set_aside"), _order_failures()

    settler = Settler(extra_env={"SETTLE_ORDER_MAX_TRIES": "3"})
    try:
        wait_for(lambda: _status(poison) == OrderStatus.CANCELLED, timeout=60, what="the bad order set aside")
        assert [_status(o) for o in placed] == ["PAID", "CANCELLED", "PAID"]
        later = _place_async(make_user(balance=500), product)
        wait_for(lambda: _status(later) == OrderStatus.PAID, timeout=60, what="a later order paid")
        assert settler.process.poll() is None, "the settler is still running"
    finally:
        settler.stop()

    assert _settled("set_aside") - set_aside_before == 1
    assert _order_failures() - failures_before == 3
    assert [Account.objects.get(user_id=u.id).balance for u in users] == [300, 500, 300]
    wait_for(
        lambda: redis_counts.available(product_ids=[product.id])[product.id] == 15,
        what="the bad order's units back in Redis",
    )
