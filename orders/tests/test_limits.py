"""Abuse limits on ordering: purchase limits per customer, rate limits, the unpaid cap, the
cancel window (docs/security.md "Limits")."""

from __future__ import annotations

import datetime
import threading
import time
import uuid

import orjson
import pytest
from django.db import connection, connections
from django.db.models import Sum

from coupons.models import Coupon
from devtools.testing import client_for, make_product, make_user, order_body, race, run_in_django_process, wait_for
from inventory import redis_counts
from inventory.errors import PurchaseLimitReached
from inventory.models import StockMovement
from inventory.reconciliation import inventory_reconcile
from inventory.services import product_purchase_limit_set, product_update
from orders import sales_counter
from orders.errors import TooManyUnpaidOrders
from orders.models import IdempotencyRecord, Order, OrderItem, OrderStatus
from orders.services import OrderLine, order_place
from orders.settlement import settler_run

pytestmark = pytest.mark.django_db(transaction=True)


def limited_product(limit: int, *, stock_quantity: int = 100, price: int = 10):
    product = make_product(price=price, stock_quantity=stock_quantity)
    product_purchase_limit_set(product=product, limit=limit)
    return product


def units_bought(user, product) -> int:
    return (
        OrderItem.objects.filter(order__user=user, product=product)
        .exclude(order__status=OrderStatus.CANCELLED)
        .aggregate(units=Sum("quantity"))["units"]
        or 0
    )


# --- Purchase limits ---------------------------------------------------------------------


@pytest.mark.slow
def test_one_users_parallel_orders_never_pass_a_limit_of_two():
    buyer = make_user(balance=10_000)
    product = limited_product(2)

    def order_one(_):
        try:
            return order_place(user_id=buyer.id, lines=[OrderLine(product.id, 1, product.price)]).status_code
        except PurchaseLimitReached as refused:
            return refused.details

    results = race(8, order_one)
    assert sorted(r for r in results if r == 201) == [201, 201]
    refused = [r for r in results if r != 201]
    assert len(refused) == 6
    assert all(r == {"productId": product.id, "limit": 2, "alreadyHeld": 2, "requested": 1} for r in refused)
    assert units_bought(buyer, product) == 2
    assert redis_counts.available(product_ids=[product.id])[product.id] == 98
    assert redis_counts.holdings(product_id=product.id) == {buyer.id: 2}


def test_over_the_limit_is_409_purchase_limit_reached_and_others_are_unaffected():
    buyer, other = make_user(balance=10_000), make_user(balance=10_000)
    product = limited_product(2)
    assert client_for(buyer).post("/api/v1/orders", order_body(buyer, (product, 2)), format="json").status_code == 201
    answer = client_for(buyer).post("/api/v1/orders", order_body(buyer, (product, 1)), format="json")
    assert answer.status_code == 409
    assert answer.json()["error"]["code"] == "PURCHASE_LIMIT_REACHED"
    assert answer.json()["error"]["details"] == {"productId": product.id, "limit": 2, "alreadyHeld": 2, "requested": 1}
    assert client_for(other).post("/api/v1/orders", order_body(other, (product, 2)), format="json").status_code == 201
    unlimited = make_product(price=1)
    assert client_for(buyer).post("/api/v1/orders", order_body(buyer, (unlimited, 5)), format="json").status_code == 201
    assert redis_counts.available(product_ids=[product.id])[product.id] == 96


def test_a_cancelled_order_gives_its_allowance_back():
    buyer = make_user(balance=10_000)
    product = limited_product(2)
    client = client_for(buyer)
    first = client.post("/api/v1/orders", order_body(buyer, (product, 2)), format="json").json()
    assert client.post("/api/v1/orders", order_body(buyer, (product, 1)), format="json").status_code == 409
    assert client.post(f"/api/v1/orders/{first['orderId']}/cancel").status_code == 200
    assert redis_counts.holdings(product_id=product.id) == {}
    assert client.post("/api/v1/orders", order_body(buyer, (product, 2)), format="json").status_code == 201


def test_an_order_that_fails_after_reserving_gives_its_allowance_back():
    buyer = make_user(balance=15)
    product = limited_product(2)
    answer = client_for(buyer).post("/api/v1/orders", order_body(buyer, (product, 2)), format="json")
    assert answer.json()["error"]["code"] == "INSUFFICIENT_BALANCE"
    assert redis_counts.holdings(product_id=product.id) == {}
    assert redis_counts.available(product_ids=[product.id])[product.id] == 100


def test_reconciliation_rebuilds_wiped_holdings_from_the_database_and_in_flight_reservations():
    buyer, other = make_user(balance=10_000), make_user(balance=10_000)
    product = limited_product(3)
    order_place(user_id=buyer.id, lines=[OrderLine(product.id, 2, product.price)])
    cancelled = order_place(user_id=other.id, lines=[OrderLine(product.id, 3, product.price)]).order
    client_for(other).post(f"/api/v1/orders/{cancelled.id}/cancel")
    order_place(user_id=other.id, lines=[OrderLine(product.id, 1, product.price)])
    in_flight = redis_counts.reserve(token=uuid.uuid4(), quantities={product.id: 1}, holder=buyer.id)
    assert in_flight.ok  # an order of the buyer's that has not committed yet
    redis_counts.redis_client().delete(redis_counts.held_key(product.id))  # Redis lost the holdings
    redis_counts.redis_client().delete(redis_counts.limit_key(product.id))  # and the limit

    report = inventory_reconcile()
    assert report.holding_drifts == {(product.id, buyer.id): 3, (product.id, other.id): 1}
    assert redis_counts.holdings(product_id=product.id) == {buyer.id: 3, other.id: 1}
    with pytest.raises(PurchaseLimitReached):
        order_place(user_id=buyer.id, lines=[OrderLine(product.id, 1, product.price)])
    assert inventory_reconcile().holding_drifts == {}


def test_a_limit_set_on_a_product_already_sold_counts_the_earlier_purchases():
    buyer = make_user(balance=10_000)
    product = make_product(price=10)
    order_place(user_id=buyer.id, lines=[OrderLine(product.id, 2, product.price)])
    assert StockMovement.objects.get(product=product, kind=StockMovement.Kind.SALE).holder == buyer.id
    product_purchase_limit_set(product=product, limit=2)
    with pytest.raises(PurchaseLimitReached):
        order_place(user_id=buyer.id, lines=[OrderLine(product.id, 1, product.price)])
    product_purchase_limit_set(product=product, limit=None)  # lifted
    assert order_place(user_id=buyer.id, lines=[OrderLine(product.id, 1, product.price)]).status_code == 201


# --- Rate limits -------------------------------------------------------------------------


def test_over_the_per_user_rate_limit_is_429_with_retry_after_and_reserves_nothing(settings):
    settings.ORDER_RATE_LIMIT_PER_USER = 3
    settings.ORDER_RATE_LIMIT_WINDOW_SECONDS = 600
    buyer, other = make_user(balance=10_000), make_user(balance=10_000)
    product = make_product(price=1)
    client = client_for(buyer)
    for _ in range(3):
        assert client.post("/api/v1/orders", order_body(buyer, (product, 1)), format="json").status_code == 201
    answer = client.post("/api/v1/orders", order_body(buyer, (product, 1)), format="json")
    assert answer.status_code == 429
    assert answer.json()["error"]["code"] == "RATE_LIMITED"
    assert answer.json()["error"]["details"] == {"scope": "user", "limit": 3, "windowSeconds": 600}
    assert 1 <= int(answer["Retry-After"]) <= 600
    assert redis_counts.available(product_ids=[product.id])[product.id] == 97  # nothing reserved
    assert Order.objects.filter(user=buyer).count() == 3
    assert client_for(other).post("/api/v1/orders", order_body(other, (product, 1)), format="json").status_code == 201


@pytest.mark.parametrize(
    "refused",
    ["wrong price", "unknown product", "off sale", "wrong price with a coupon", "wrong price with a key",
     "unknown product with a key"],
)  # fmt: skip
def test_every_order_attempt_counts_against_the_rate_limit_whatever_refuses_it(settings, refused):
    """An attempt refused for its prices or products (or one with a coupon or an
    Idempotency-Key, which take the longer path) is counted like any other: a burst of them
    ends in 429, and leaves no key record behind."""
    settings.ORDER_RATE_LIMIT_PER_USER = 5
    settings.ORDER_RATE_LIMIT_WINDOW_SECONDS = 600
    buyer = make_user(balance=10_000)
    product = make_product(price=10)
    Coupon.objects.create(code="TEN", kind=Coupon.Kind.PERCENT, value=10)
    client = client_for(buyer)
    body = order_body(buyer, (product, 1), coupon="TEN" if "coupon" in refused else None)
    if "wrong price" in refused:
        body["orderItems"][0]["price"] = 11
    elif "unknown product" in refused:
        body["orderItems"][0]["productId"] = product.id + 1_000
    else:
        product_update(product=product, active=False)
    headers = {}

    codes = []
    for attempt in range(7):
        if "with a key" in refused:
            headers = {"HTTP_IDEMPOTENCY_KEY": f"burst-{attempt}"}
        codes.append(client.post("/api/v1/orders", body, format="json", **headers).status_code)

    first = 404 if "unknown" in refused else 409
    assert codes == [first] * 5 + [429, 429]
    assert redis_counts.available(product_ids=[product.id])[product.id] == 100
    assert not Order.objects.filter(user=buyer).exists()
    assert IdempotencyRecord.objects.filter(user=buyer).count() == 0


def test_a_refusal_before_anything_was_reserved_is_not_kept_for_the_key_so_its_retry_is_real():
    buyer = make_user(balance=10_000)
    product = make_product(price=10, stock_quantity=1)
    client = client_for(buyer)
    body = order_body(buyer, (product, 2))

    first = client.post("/api/v1/orders", body, format="json", HTTP_IDEMPOTENCY_KEY="retry-me")
    redis_counts.add_available(product_id=product.id, quantity=5)
    retry = client.post("/api/v1/orders", body, format="json", HTTP_IDEMPOTENCY_KEY="retry-me")

    assert first.json()["error"]["code"] == "OUT_OF_STOCK"
    assert retry.status_code == 201 and "Idempotent-Replayed" not in retry.headers
    assert Order.objects.filter(user=buyer).count() == 1


def test_a_user_holds_at_most_the_cap_of_idempotency_keys_and_still_gets_its_replays(settings):
    settings.IDEMPOTENCY_KEYS_PER_USER = 3
    buyer, other = make_user(balance=10_000), make_user(balance=10_000)
    product = make_product(price=1)
    client = client_for(buyer)
    body = order_body(buyer, (product, 1))
    for n in range(3):
        assert client.post("/api/v1/orders", body, format="json", HTTP_IDEMPOTENCY_KEY=f"k{n}").status_code == 201

    refused = client.post("/api/v1/orders", body, format="json", HTTP_IDEMPOTENCY_KEY="k3")
    replay = client.post("/api/v1/orders", body, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    others = client_for(other).post("/api/v1/orders", order_body(other, (product, 1)), format="json",
                                    HTTP_IDEMPOTENCY_KEY="k3")  # fmt: skip

    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "TOO_MANY_IDEMPOTENCY_KEYS"
    assert refused.json()["error"]["details"] == {"limit": 3, "ttlHours": settings.IDEMPOTENCY_KEY_TTL_HOURS}
    ttl_and_purge = settings.IDEMPOTENCY_KEY_TTL_HOURS * 3600 + 3600  # the oldest key's, made moments ago
    assert ttl_and_purge - 60 <= int(refused["Retry-After"]) <= ttl_and_purge
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert others.status_code == 201
    assert Order.objects.filter(user=buyer).count() == 3
    assert IdempotencyRecord.objects.filter(user=buyer).count() == 3


def test_the_per_address_limit_counts_every_user_from_that_address(settings):
    settings.ORDER_RATE_LIMIT_PER_IP = 2
    users = [make_user(balance=100) for _ in range(3)]
    product = make_product(price=1)
    codes = [
        client_for(u).post("/api/v1/orders", order_body(u, (product, 1)), format="json", REMOTE_ADDR="10.1.1.1")
        for u in users
    ]
    assert [c.status_code for c in codes] == [201, 201, 429]
    assert codes[2].json()["error"]["details"]["scope"] == "ip"
    elsewhere = client_for(users[2]).post(
        "/api/v1/orders", order_body(users[2], (product, 1)), format="json", REMOTE_ADDR="10.1.1.2"
    )
    assert elsewhere.status_code == 201


def test_the_rate_limit_is_shared_with_another_process(settings):
    settings.ORDER_RATE_LIMIT_PER_USER = 3
    settings.ORDER_RATE_LIMIT_WINDOW_SECONDS = 600
    buyer = make_user(balance=10_000)
    product = make_product(price=1)
    other_process = run_in_django_process(f"""
        from django.conf import settings
        settings.ORDER_RATE_LIMIT_PER_USER, settings.ORDER_RATE_LIMIT_WINDOW_SECONDS = 3, 600
        from orders.services import OrderLine, order_place
        for _ in range(2):
            order_place(user_id={buyer.id}, lines=[OrderLine({product.id}, 1, 1)])
    """)
    assert other_process.returncode == 0, other_process.stderr
    client = client_for(buyer)
    assert client.post("/api/v1/orders", order_body(buyer, (product, 1)), format="json").status_code == 201
    assert client.post("/api/v1/orders", order_body(buyer, (product, 1)), format="json").status_code == 429


# --- The unpaid cap ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("intake", "idempotency_key"),
    [("redis", None), ("database", None), ("database", "with-a-key")],
    ids=["intake", "one statement", "transaction"],
)
def test_a_user_with_too_many_unpaid_orders_gets_409_until_a_settler_pays_them(settings, intake, idempotency_key):
    settings.ORDER_ASYNC_INTAKE = intake
    settings.ORDER_UNPAID_LIMIT_PER_USER = 2
    settings.PAYMENT_BACKLOG_MAX_SECONDS = 3600
    buyer = make_user(balance=10_000)
    product = make_product(price=1)
    client = client_for(buyer)

    def order_async(n: int):
        headers = {"HTTP_IDEMPOTENCY_KEY": f"{idempotency_key}-{n}"} if idempotency_key else {}
        return client.post("/api/v1/orders", order_body(buyer, (product, 1)), format="json",
                           HTTP_PREFER="respond-async", **headers)  # fmt: skip

    assert [order_async(n).status_code for n in range(2)] == [202, 202]
    refused = order_async(2)
    assert refused.status_code == 409
    assert refused.json()["error"] == {
        "code": "TOO_MANY_UNPAID_ORDERS",
        "message": TooManyUnpaidOrders.default_message,
        "details": {"limit": 2, "unpaid": 2},
    }
    assert redis_counts.available(product_ids=[product.id])[product.id] == 98  # its reservation given back
    assert client.post("/api/v1/orders", order_body(buyer, (product, 1)), format="json").status_code == 201
    assert settler_run(until_empty=True).paid == 2
    assert order_async(3).status_code == 202


# --- The cancel window -------------------------------------------------------------------


def test_a_paid_order_cannot_be_cancelled_by_its_buyer_after_the_window(settings):
    settings.ORDER_CANCEL_WINDOW_SECONDS = 3600
    buyer = make_user(balance=10_000)
    product = make_product(price=1)
    client = client_for(buyer)
    old, recent = (client.post("/api/v1/orders", order_body(buyer, (product, 1)), format="json").json()
                   for _ in range(2))  # fmt: skip
    placed_at = Order.objects.get(pk=old["orderId"]).created_at - datetime.timedelta(seconds=3601)
    Order.objects.filter(pk=old["orderId"]).update(created_at=placed_at)
    answer = client.post(f"/api/v1/orders/{old['orderId']}/cancel")
    assert answer.status_code == 409
    assert answer.json()["error"]["code"] == "CANCEL_WINDOW_CLOSED"
    assert answer.json()["error"]["details"]["windowSeconds"] == 3600
    assert Order.objects.get(pk=old["orderId"]).status == OrderStatus.PAID
    assert client.post(f"/api/v1/orders/{recent['orderId']}/cancel").status_code == 200


# --- Lock order: the coupon's row after the balance ---------------------------------------


def test_a_buyer_stuck_in_its_payment_does_not_hold_the_coupon_other_buyers_need():
    """Buyer A's payment cannot get its account row (another transaction holds it, as a
    balance that keeps being retried would); buyer B, with the same coupon, is never made to
    wait for a lock while A is stuck, and is served."""
    coupon = Coupon.objects.create(code="SHARED", kind=Coupon.Kind.FIXED, value=1)
    a, b = make_user(balance=1_000), make_user(balance=1_000)
    product = make_product(price=10)
    holder = connections.create_connection("default")  # holds A's account row
    holder.connect()
    holder.connection.execute("BEGIN")
    holder.connection.execute("SELECT 1 FROM accounts_account WHERE user_id = %s FOR UPDATE", [a.id])
    pids, answers = {}, {}

    def place(name, user):
        connection.ensure_connection()
        pids[name] = connection.connection.info.backend_pid
        try:
            answers[name] = order_place(user_id=user.id, lines=[OrderLine(product.id, 1, 10)], coupon_code="SHARED")
        finally:
            connection.close()

    def waiting_for_a_lock(name) -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted", [pids[name]])
            return cursor.fetchone()[0] > 0

    stuck = threading.Thread(target=place, args=("a", a))
    stuck.start()
    try:
        wait_for(lambda: "a" in pids and waiting_for_a_lock("a"), what="A waiting for its account row")
        served = threading.Thread(target=place, args=("b", b))
        served.start()
        while served.is_alive():
            assert not ("b" in pids and waiting_for_a_lock("b")), "B waits for a lock A holds"
            served.join(0.01)
        assert answers["b"].order.status == OrderStatus.PAID and answers["b"].order.discount_amount == 1
        assert "a" not in answers  # A is still stuck in its payment
    finally:
        holder.connection.execute("ROLLBACK")  # A goes on
        stuck.join()
        holder.close()
    assert answers["a"].order.status == OrderStatus.PAID
    coupon.refresh_from_db()
    assert coupon.times_used == 2


# --- The sales consumer's memory of events ------------------------------------------------


def test_seen_event_ids_are_kept_for_their_retention_then_trimmed_in_batches():
    client = redis_counts.redis_client()
    now_ms = int(time.time() * 1000)
    client.sadd(sales_counter.SEEN_KEY, "from-before")  # the old set is converted on first use
    fields = {b"eventId": b"new", b"type": b"order.paid", b"payload": orjson.dumps({"items": []})}
    assert sales_counter.apply(fields)
    assert not sales_counter.apply(fields)  # a duplicate within the retention counts once
    assert client.type(sales_counter.SEEN_KEY) == b"zset"
    client.zadd(sales_counter.SEEN_KEY, {f"old-{i}": now_ms - 7_200_000 for i in range(25)})

    assert sales_counter.seen_events_trim(older_than_seconds=3600, batch=10) == 25
    assert set(client.zrange(sales_counter.SEEN_KEY, 0, -1)) == {b"from-before", b"new"}
    assert sales_counter.seen_events_trim(older_than_seconds=0) == 2
    assert client.zcard(sales_counter.SEEN_KEY) == 0
