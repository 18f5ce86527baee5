"""Idempotency-Key under real threads: a first request slower than the stale bound and its retry.

The test holds the buyer's account row locked from a connection of its own, so the first
request stops at its payment, inside its order's transaction, after it took the key. Its retry
takes the key over once the key is stale by the database's clock; then the lock goes.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from django.db import connection

from accounts.models import Account
from accounts.selectors import ledger_balance
from config.local import current_database_url
from devtools.testing import client_for, make_product, make_user, order_body, wait_for
from inventory import redis_counts
from orders.models import IdempotencyRecord, Order
from payments.models import Payment

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _requests_waiting_on_a_lock() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


def test_a_first_request_slower_than_the_stale_bound_loses_its_key_and_orders_nothing(settings):
    settings.IDEMPOTENCY_STALE_SECONDS = 1
    settings.IDEMPOTENCY_WAIT_SECONDS = 60  # the retry waits for the key to go stale, then takes it
    user = make_user(balance=1_000)
    product = make_product(price=100, stock_quantity=10)
    body = order_body(user, (product, 1))
    clients = [client_for(user), client_for(user)]

    def post(i: int):
        try:
            return clients[i].post("/api/v1/orders", body, format="json", HTTP_IDEMPOTENCY_KEY="slow-1")
        finally:
            connection.close()

    def taken_at():  # a take-over writes a new time (and owner) on the key's row
        return IdempotencyRecord.objects.filter(key="slow-1").values_list("created_at", flat=True).first()

    blocker = psycopg.connect(current_database_url())
    try:
        blocker.execute("SELECT 1 FROM accounts_account WHERE user_id = %s FOR UPDATE", [user.id])
        with ThreadPoolExecutor(max_workers=2) as pool:
            first = pool.submit(post, 0)
            wait_for(_requests_waiting_on_a_lock, what="the first request to wait at its payment")
            taken_by_first = taken_at()
            retry = pool.submit(post, 1)
            wait_for(lambda: taken_at() != taken_by_first, what="the retry to take the stale key over")
            blocker.rollback()  # both go on: the first to record its answer, the retry to order
            first_answer, retry_answer = first.result(timeout=60), retry.result(timeout=60)
    finally:
        blocker.close()

    assert first_answer.status_code == 409, first_answer.content
    assert first_answer.json()["error"]["code"] == "CONFLICT"
    assert "took it over" in first_answer.json()["error"]["message"]
    assert retry_answer.status_code == 201, retry_answer.content
    order = Order.objects.get()
    assert order.id == retry_answer.json()["orderId"]
    record = IdempotencyRecord.objects.get(key="slow-1")
    assert (record.order_id, record.status_code) == (order.id, 201)
    assert Payment.objects.count() == 1
    assert Account.objects.get(user=user).balance == 900 == ledger_balance(user_id=user.id)
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 9}  # the first's reservation went back
