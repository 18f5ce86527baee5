"""Real threads against real PostgreSQL and Redis: the invariants hold under concurrency."""

from __future__ import annotations

from collections import Counter

import pytest

from accounts.models import Account
from accounts.selectors import ledger_balance
from coupons.models import Coupon, CouponRedemption
from devtools.testing import CountedSince, client_for, make_product, make_user, order_body, race
from inventory import redis_counts
from inventory.reconciliation import inventory_reconcile, on_hand_by_product
from orders.models import Order, OrderItem

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_one_user_ordering_50_times_at_once_loses_no_update_and_never_conflicts():
    user = make_user(balance=10_000)
    product = make_product(price=7, stock_quantity=1_000)
    clients = [client_for(user) for _ in range(50)]
    counted = CountedSince()

    responses = race(50, lambda i: clients[i].post("/api/v1/orders", order_body(user, (product, 3)), format="json"))

    assert Counter(r.status_code for r in responses) == {201: 50}
    account = Account.objects.get(user=user)
    assert account.balance == 10_000 - 50 * 21 == ledger_balance(user_id=user.id)
    assert account.version == 1 + 50  # the opening top-up, then one bump per order
    assert counted["balance_conflict_failures"] == 0
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 1_000 - 150}


def test_two_concurrent_orders_never_oversell_the_last_units_stock_10_against_100_orders():
    product = make_product(price=1, stock_quantity=10)
    users = [make_user(balance=100) for _ in range(100)]
    clients = [client_for(u) for u in users]

    responses = race(
        100, lambda i: clients[i].post("/api/v1/orders", order_body(users[i], (product, 1)), format="json")
    )

    codes = Counter(r.status_code for r in responses)
    assert codes == {201: 10, 409: 90}
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 409} == {"OUT_OF_STOCK"}
    assert Order.objects.count() == 10 == sum(OrderItem.objects.values_list("quantity", flat=True))
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 0}
    report = inventory_reconcile()
    assert report.drifted == []
    assert on_hand_by_product()[product.id] == 0
    assert sum(Account.objects.values_list("balance", flat=True)) == 100 * 100 - 10


def test_a_coupon_limited_to_5_is_used_exactly_5_times_by_50_concurrent_orders():
    Coupon.objects.create(code="FLASH", kind=Coupon.Kind.FIXED, value=3, usage_limit=5)
    product = make_product(price=10, stock_quantity=100)
    users = [make_user(balance=100) for _ in range(50)]
    clients = [client_for(u) for u in users]

    responses = race(
        50,
        lambda i: clients[i].post("/api/v1/orders", order_body(users[i], (product, 1), coupon="FLASH"), format="json"),
    )

    assert Counter(r.status_code for r in responses) == {201: 5, 409: 45}
    assert {r.json()["error"]["details"]["reason"] for r in responses if r.status_code == 409} == {
        "USAGE_LIMIT_REACHED"
    }
    assert Coupon.objects.get(code="FLASH").times_used == 5 == CouponRedemption.objects.count()
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 95}


def test_a_per_user_coupon_limit_holds_when_one_user_races_it():
    Coupon.objects.create(code="ONCE", kind=Coupon.Kind.FIXED, value=2, per_user_limit=1)
    product = make_product(price=10, stock_quantity=100)
    user = make_user(balance=1_000)
    clients = [client_for(user) for _ in range(20)]

    responses = race(
        20, lambda i: clients[i].post("/api/v1/orders", order_body(user, (product, 1), coupon="ONCE"), format="json")
    )

    assert Counter(r.status_code for r in responses) == {201: 1, 409: 19}
    assert CouponRedemption.objects.filter(user_id=user.id).count() == 1


@pytest.mark.parametrize("stock_quantity", [100, 2], ids=["plenty of stock", "stock for one order only"])
def test_the_same_idempotency_key_sent_50_times_at_once_makes_one_order(stock_quantity):
    """With stock for one order only, no duplicate answers its own OUT_OF_STOCK: every one
    gets the key's first answer."""
    user = make_user(balance=1_000)
    product = make_product(price=5, stock_quantity=stock_quantity)
    clients = [client_for(user) for _ in range(50)]

    responses = race(
        50,
        lambda i: clients[i].post(
            "/api/v1/orders", order_body(user, (product, 2)), format="json", HTTP_IDEMPOTENCY_KEY="double-click"
        ),
    )

    assert Counter(r.status_code for r in responses) == {201: 50}
    assert len({r.json()["orderId"] for r in responses}) == 1
    assert Order.objects.count() == 1
    assert Account.objects.get(user=user).balance == 990
    assert redis_counts.available(product_ids=[product.id]) == {product.id: stock_quantity - 2}


def test_201s_equal_orders_and_money_and_stock_are_conserved_in_a_mixed_race():
    products = [make_product(price=p, stock_quantity=30) for p in (1, 2, 3)]
    users = [make_user(balance=40) for _ in range(10)]
    clients = [client_for(u) for u in users]

    def order(i: int):
        user = users[i % 10]
        items = [(products[i % 3], 1 + i % 4), (products[(i + 1) % 3], 1)]
        return clients[i % 10].post("/api/v1/orders", order_body(user, *items), format="json")

    responses = race(80, order)

    created = [r for r in responses if r.status_code == 201]
    assert created, "some orders must get through"
    refusals = {r.json()["error"]["code"] for r in responses if r.status_code != 201}
    assert refusals <= {"OUT_OF_STOCK", "INSUFFICIENT_BALANCE"}  # never a lost race (CONFLICT)
    assert len(created) == Order.objects.count()
    sold = Counter()
    for item in OrderItem.objects.all():
        sold[item.product_id] += item.quantity
    counts = redis_counts.available(product_ids=[p.id for p in products])
    for p in products:
        assert counts[p.id] + sold[p.id] == 30 == on_hand_by_product()[p.id] + sold[p.id]
    paid = sum(r.json()["paidAmount"] for r in created)
    assert sum(Account.objects.values_list("balance", flat=True)) + paid == 10 * 40
    assert inventory_reconcile().drifted == []
