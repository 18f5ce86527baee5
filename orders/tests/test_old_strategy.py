"""The old design (ORDER_STRATEGY=old), kept for comparison: correct, but it fails and waits."""

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from django.db import connection

from accounts.models import Account
from config.local import current_database_url
from devtools.testing import (
    BalanceRowHeld,
    CountedSince,
    client_for,
    make_product,
    make_user,
    order_body,
    race,
    wait_for,
    waiting_on_a_row_lock,
)
from inventory import redis_counts
from inventory.legacy import LOCK_PREFIX
from inventory.reconciliation import inventory_reconcile, on_hand_by_product
from orders.models import Order

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def old_design(settings):
    settings.ORDER_STRATEGY = "old"
    settings.LEGACY_LOCK_RETRY_MS = 10
    settings.LEGACY_LOCK_WAIT_MS = 3_000
    return CountedSince()


def test_old_design_never_oversells_and_leaves_redis_matching_the_database(old_design):
    product = make_product(price=1, stock_quantity=10)
    users = [make_user(balance=100) for _ in range(30)]
    clients = [client_for(u) for u in users]

    responses = race(30, lambda i: clients[i].post("/api/v1/orders", order_body(users[i], (product, 1)), format="json"))

    assert Counter(r.status_code for r in responses)[201] == 10 == Order.objects.count()
    assert on_hand_by_product()[product.id] == 0
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 0}
    assert inventory_reconcile().drifted == []


def test_old_design_without_balance_retry_refuses_an_order_whose_balance_changed_meanwhile_with_conflict(
    old_design,
):
    """The report's failure, forced: the order reads the balance's version, a top-up commits a
    new one before the order's UPDATE, and with one attempt the order is refused."""
    product = make_product(price=1, stock_quantity=10)
    user = make_user(balance=100)
    client = client_for(user)

    def place():
        try:
            return client.post("/api/v1/orders", order_body(user, (product, 3)), format="json")
        finally:
            connection.close()

    with BalanceRowHeld(user_id=user.id, amount=5) as held, ThreadPoolExecutor(max_workers=1) as pool:
        answer = pool.submit(place)
        wait_for(waiting_on_a_row_lock, what="the order's balance update waiting behind the top-up")
        held.release()
        response = answer.result(timeout=60)

    assert response.status_code == 409 and response.json()["error"]["code"] == "CONFLICT"
    assert old_design["balance_conflict_failures"] == 1
    assert Account.objects.get(user=user).balance == 105 and not Order.objects.exists()
    assert on_hand_by_product()[product.id] == 10


def test_old_design_without_balance_retry_loses_no_update_when_a_user_orders_concurrently(old_design):
    products = [make_product(price=1, stock_quantity=1_000) for _ in range(5)]
    user = make_user(balance=10_000)
    clients = [client_for(user) for _ in range(20)]

    responses = race(
        20, lambda i: clients[i].post("/api/v1/orders", order_body(user, (products[i % 5], 1)), format="json")
    )

    codes = Counter(r.json().get("error", {}).get("code", r.status_code) for r in responses)
    assert set(codes) <= {201, "CONFLICT", "LOCK_TIMEOUT"}
    assert Account.objects.get(user=user).balance == 10_000 - codes[201] == 10_000 - Order.objects.count()
    assert old_design["balance_conflict_failures"] == codes["CONFLICT"]


def test_old_design_gives_up_with_lock_timeout_when_a_product_stays_locked(old_design, settings):
    settings.LEGACY_LOCK_WAIT_MS = 200
    user = make_user(balance=100)
    product = make_product(price=1, stock_quantity=10)
    redis_counts.redis_client().set(f"{LOCK_PREFIX}{product.id}", "someone-else", px=10_000)

    response = client_for(user).post("/api/v1/orders", order_body(user, (product, 1)), format="json")

    assert response.status_code == 409 and response.json()["error"]["code"] == "LOCK_TIMEOUT"
    assert old_design["lock_timeouts"] == 1
    assert Order.objects.count() == 0 and on_hand_by_product()[product.id] == 10


def _orders_waiting_on_a_lock() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


def test_a_lock_that_expires_mid_transaction_keeps_the_next_holder_out_until_the_first_commits(old_design, settings):
    """The last unit, two buyers. The first holds its product lock past the lock's TTL: the test
    holds the first buyer's account row, so that order waits at its payment with the unit taken
    in its open transaction. Once the lock has expired the second order takes it; it must not
    read the stock before the first order is over."""
    settings.LEGACY_LOCK_TTL_MS = 200  # shortened: the first order holds its lock for much longer
    product = make_product(price=1, stock_quantity=1)
    first, second = make_user(balance=10), make_user(balance=10)
    clients = {first: client_for(first), second: client_for(second)}

    def post(user):
        try:
            return clients[user].post("/api/v1/orders", order_body(user, (product, 1)), format="json")
        finally:
            connection.close()

    blocker = psycopg.connect(current_database_url())
    try:
        blocker.execute("SELECT 1 FROM accounts_account WHERE user_id = %s FOR UPDATE", [first.id])
        with ThreadPoolExecutor(max_workers=2) as pool:
            first_order = pool.submit(post, first)
            wait_for(lambda: _orders_waiting_on_a_lock() == 1, what="the first order to wait at its payment")
            wait_for(
                lambda: not redis_counts.redis_client().exists(f"{LOCK_PREFIX}{product.id}"), what="its lock to expire"
            )
            second_order = pool.submit(post, second)
            wait_for(lambda: second_order.done() or _orders_waiting_on_a_lock() == 2, what="the second order")
            blocker.rollback()  # the first order pays and commits
            answers = [first_order.result(timeout=60), second_order.result(timeout=60)]
    finally:
        blocker.close()

    assert [answer.status_code for answer in answers] == [201, 409], [a.content for a in answers]
    assert answers[1].json()["error"]["code"] == "OUT_OF_STOCK"
    assert Order.objects.count() == 1 and on_hand_by_product()[product.id] == 0
    assert Account.objects.get(user=second).balance == 10
