"""Batch settlement: many asynchronous orders paid per transaction, each exactly once, with the
balance rules of one order at a time (real PostgreSQL, Redis and settler processes)."""

from __future__ import annotations

import threading
import time

import pytest

from accounts.models import Account, BalanceEntry
from accounts.selectors import ledger_balance
from coupons.models import Coupon, CouponRedemption
from devtools.testing import (
    BalanceRowHeld,
    CountedSince,
    Settler,
    client_for,
    make_product,
    make_user,
    order_body,
    race,
    wait_for,
)
from inventory import redis_counts
from inventory.reconciliation import inventory_reconcile, on_hand_by_product
from orders import events
from orders.models import Order, OrderEvent, OrderStatus
from orders.services import OrderLine, order_cancel, order_place
from orders.settlement import orders_settle_batch
from payments.models import Payment, Refund

pytestmark = [
    pytest.mark.usefixtures("database_intake"),  # the database's asynchronous path (the intake: test_intake.py)
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
]

ASYNC = {"HTTP_PREFER": "respond-async"}


def _place(user, product, quantity: int = 1, coupon: str | None = None) -> Order:
    lines = [OrderLine(product.id, quantity, product.price)]
    return order_place(user_id=user.id, lines=lines, coupon_code=coupon, asynchronous=True).order


def _statuses(orders: list[Order]) -> list[str | None]:
    """Each order's status in the database; None for one the intake holds, not yet written."""
    by_id = dict(Order.objects.filter(pk__in=[o.id for o in orders]).values_list("id", "status"))
    return [by_id.get(o.id) for o in orders]


def _event_types(order: Order) -> list[str]:
    return list(OrderEvent.objects.filter(order_id=order.id).order_by("id").values_list("type", flat=True))


def test_a_short_balance_in_the_middle_of_a_batch_cancels_that_order_alone():
    rich, poor, other = make_user(balance=1_000), make_user(balance=50), make_user(balance=1_000)
    product = make_product(price=100, stock_quantity=10)
    placed = [_place(rich, product), _place(poor, product), _place(other, product, quantity=2)]

    batch = orders_settle_batch(limit=10)

    assert (batch.paid, batch.cancelled, batch.retried) == ([placed[0].id, placed[2].id], [placed[1].id], [])
    assert _statuses(placed) == ["PAID", "CANCELLED", "PAID"]
    assert _event_types(placed[1]) == [events.CREATED, events.PAYMENT_STARTED, events.PAYMENT_FAILED, events.CANCELLED]
    assert _event_types(placed[0]) == [events.CREATED, events.PAYMENT_STARTED, events.PAID]
    assert [Account.objects.get(user=u).balance for u in (rich, poor, other)] == [900, 50, 800]
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 7}
    assert on_hand_by_product()[product.id] == 7
    assert not Payment.objects.filter(order_id=placed[1].id).exists()
    assert inventory_reconcile().drifted == []


def test_the_same_user_twice_in_a_batch_is_paid_in_order_against_what_the_first_left():
    user = make_user(balance=250)
    product = make_product(price=100, stock_quantity=10)
    first, second, third = _place(user, product, 2), _place(user, product, 1), _place(user, product)

    batch = orders_settle_batch(limit=10)

    # 250: the first takes 200, the second (100) is short, the third is short too.
    assert batch.paid == [first.id] and batch.cancelled == [second.id, third.id]
    assert Account.objects.get(user=user).balance == 50 == ledger_balance(user_id=user.id)
    entries = BalanceEntry.objects.filter(account_id=user.id).order_by("id")
    assert list(entries.values_list("amount", "balance_after")) == [(250, 250), (-200, 50)]


def test_one_users_orders_in_a_batch_each_leave_their_own_balance_in_the_ledger():
    user = make_user(balance=1_000)
    product = make_product(price=100, stock_quantity=10)
    placed = [_place(user, product, quantity) for quantity in (1, 2, 3)]

    assert orders_settle_batch(limit=10).paid == [o.id for o in placed]

    payments = BalanceEntry.objects.filter(account_id=user.id, kind=BalanceEntry.Kind.PAYMENT).order_by("id")
    assert list(payments.values_list("reference", "amount", "balance_after")) == [
        (f"order:{placed[0].id}", -100, 900),
        (f"order:{placed[1].id}", -200, 700),
        (f"order:{placed[2].id}", -300, 400),
    ]
    assert Account.objects.get(user=user).balance == 400 == ledger_balance(user_id=user.id)


def test_coupon_orders_in_a_batch_pay_their_discounted_amount_and_a_failed_one_gives_its_use_back():
    Coupon.objects.create(code="TEN", kind=Coupon.Kind.FIXED, value=10, usage_limit=5)
    payer, short = make_user(balance=1_000), make_user(balance=95)
    product = make_product(price=100, stock_quantity=10)
    paid, cancelled = _place(payer, product, coupon="TEN"), _place(short, product, 2, coupon="TEN")
    assert Coupon.objects.get(code="TEN").times_used == 2

    batch = orders_settle_batch(limit=10)

    assert (batch.paid, batch.cancelled) == ([paid.id], [cancelled.id])
    order = Order.objects.get(pk=paid.id)
    assert (order.total_amount, order.discount_amount, order.paid_amount) == (100, 10, 90)
    assert Payment.objects.get(order_id=paid.id).amount == 90
    assert Account.objects.get(user=payer).balance == 910
    assert Account.objects.get(user=short).balance == 95
    assert Coupon.objects.get(code="TEN").times_used == 1
    assert list(CouponRedemption.objects.values_list("reference", "released").order_by("id")) == [
        (f"order:{paid.id}", False),
        (f"order:{cancelled.id}", True),
    ]


def test_a_balance_changed_during_the_batch_is_retried_and_paid_never_failed():
    user, bystander = make_user(balance=1_000), make_user(balance=1_000)
    product = make_product(price=100, stock_quantity=10)
    placed = [_place(user, product), _place(bystander, product)]
    counted = CountedSince()
    # The top-up changes the balance after the batch has read it: the batch's version check misses.
    with BalanceRowHeld(user_id=user.id) as held:
        threading.Timer(0.5, held.release).start()  # the batch reads 1,000 and waits on the row meanwhile
        batch = orders_settle_batch(limit=10)

    assert batch.paid == [o.id for o in placed] and batch.cancelled == batch.retried == []
    assert Account.objects.get(user=user).balance == 905 == ledger_balance(user_id=user.id)
    assert Account.objects.get(user=bystander).balance == 900
    assert counted["balance_version_conflicts"] >= 1


def test_cancel_racing_settlement_either_refunds_a_paid_order_or_cancels_it_unpaid_never_both():
    users = [make_user(balance=1_000) for _ in range(20)]
    product = make_product(price=100, stock_quantity=100)
    placed = [_place(user, product) for user in users]

    def act(i: int):
        if i == 0:
            return orders_settle_batch(limit=100)
        order = placed[i - 1]
        return order_cancel(order_id=order.id, user_id=order.user_id).status

    batch, *cancels = race(21, act)

    # Each cancel either came first (the batch skipped its locked row) or waited for the batch's
    # commit and refunded the payment: every one answered CANCELLED, none was charged for good.
    assert cancels == ["CANCELLED"] * 20
    assert _statuses(placed) == ["CANCELLED"] * 20
    assert batch.cancelled == batch.retried == []
    for user, order in zip(users, placed, strict=True):
        payment = Payment.objects.filter(order_id=order.id).first()
        if order.id in batch.paid:  # paid, then refunded once
            assert payment.status == Payment.Status.REFUNDED and Refund.objects.filter(payment=payment).count() == 1
        else:  # cancelled unpaid: never charged
            assert payment is None
        assert Account.objects.get(user=user).balance == 1_000 == ledger_balance(user_id=user.id)
    assert on_hand_by_product()[product.id] == 100
    wait_for(
        lambda: redis_counts.available(product_ids=[product.id])[product.id] == 100, what="every unit back in Redis"
    )


def test_two_settler_processes_share_the_work_and_pay_each_order_once():
    users = [make_user(balance=10_000) for _ in range(40)]
    product = make_product(price=10, stock_quantity=10_000)
    first, second = Settler(name="a", batch_size=5), Settler(name="b", batch_size=5)
    try:
        placed = []
        for round_ in range(10):
            placed += [_place(user, product) for user in users]
            time.sleep(0.05 * (round_ % 2))
        wait_for(lambda: set(_statuses(placed)) == {"PAID"}, timeout=60, what="every order paid")
    finally:
        first.stop()
        second.stop()

    assert Payment.objects.count() == 400
    assert OrderEvent.objects.filter(type=events.PAID).count() == 400
    assert first.orders_settled() + second.orders_settled() == 400
    assert first.orders_settled() > 0 and second.orders_settled() > 0
    assert {Account.objects.get(user=u).balance for u in users} == {10_000 - 10 * 10}


def _settler_idle() -> bool:
    """A settler is blocked on the intake stream (XREADGROUP ... BLOCK): it waits to be woken."""
    clients = redis_counts.redis_client().client_list()
    return any(c["cmd"] == "xreadgroup" and "b" in c["flags"] for c in clients)


@pytest.mark.parametrize("path", ["intake", "database"])
def test_an_idle_settler_pays_a_new_order_without_waiting_for_a_poll(path, settings):
    """Its poll is an hour: only the order's own stream entry (the intake's, or the wake-up a
    database order sends after its commit) can wake it within the test's timeout."""
    settings.ORDER_ASYNC_INTAKE = "redis" if path == "intake" else "database"
    user = make_user(balance=1_000)
    product = make_product(price=100, stock_quantity=10)
    settler = Settler(extra_env={"SETTLE_IDLE_WAIT_SECONDS": "3600"})
    try:
        wait_for(_settler_idle, what="the settler waiting on the stream")
        order = _place(user, product)
        wait_for(lambda: _statuses([order]) == ["PAID"], timeout=60, what="the order to be paid")
    finally:
        settler.stop()  # its wait comes in half-second slices: SIGTERM is seen at once
    assert settler.orders_settled() == 1


def test_a_settler_waiting_out_an_hours_idle_poll_stops_within_a_second_of_sigterm():
    settler = Settler(extra_env={"SETTLE_IDLE_WAIT_SECONDS": "3600"})
    wait_for(_settler_idle, what="the settler waiting on the stream")

    settler.stop()  # SIGTERM; a settler still waiting out its hour after 15 s is killed (returncode -9)

    assert settler.process.returncode == 0
    assert "settler: stopped after 0 batches" in settler.log_path.read_text()


@pytest.fixture
def bounded_backlog(settings):
    settings.PAYMENT_BACKLOG_MAX_SECONDS = 0.3
    settings.PAYMENT_BACKLOG_CHECK_SECONDS = 0.0


def test_past_the_backlog_bound_a_new_async_order_gets_503_with_retry_after_and_nothing_reserved(bounded_backlog):
    user = make_user(balance=1_000)
    product = make_product(price=100, stock_quantity=10)
    client = client_for(user)
    assert client.post("/api/v1/orders", order_body(user, (product, 1)), format="json", **ASYNC).status_code == 202
    time.sleep(0.5)  # no settler runs: the first order has now waited past the bound

    response = client.post("/api/v1/orders", order_body(user, (product, 2)), format="json", **ASYNC)

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert response.json()["error"]["details"]["limitSeconds"] == 0.3
    assert int(response.headers["Retry-After"]) >= 1
    assert Order.objects.count() == 1
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 9}
    assert client.post("/api/v1/orders", order_body(user, (product, 2)), format="json").status_code == 201  # sync
    orders_settle_batch()
    assert client.post("/api/v1/orders", order_body(user, (product, 1)), format="json", **ASYNC).status_code == 202
    assert Order.objects.filter(status=OrderStatus.PENDING_PAYMENT).count() == 1
