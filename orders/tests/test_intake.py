"""The intake: an asynchronous order accepted by Redis alone (no SQL in the request), visible at
once, and drained by settlers into the database, each order exactly once (real PostgreSQL, Redis
and settler processes)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from accounts.models import Account
from accounts.selectors import ledger_balance
from config import local
from devtools.testing import (
    ReplyCutter,
    Settler,
    client_for,
    free_port,
    make_product,
    make_user,
    order_body,
    postgres_crashed_mid_batch,
    race,
    start_redis_server,
    wait_for,
)
from inventory import redis_counts
from inventory.reconciliation import inventory_reconcile, on_hand_by_product
from kernel import metrics
from orders import intake
from orders.models import Order, OrderStatus
from orders.services import OrderLine, order_cancel, order_place
from orders.settlement import intake_settle_batch, settler_run
from payments.models import Payment

pytestmark = [pytest.mark.django_db(transaction=True)]

ASYNC = {"HTTP_PREFER": "respond-async"}


def _accept(user, product, quantity: int = 1, price: int | None = None):
    lines = [OrderLine(product.id, quantity, product.price if price is None else price)]
    return order_place(user_id=user.id, lines=lines, asynchronous=True)


def _drain() -> None:
    settler_run(until_empty=True)


def test_the_usual_asynchronous_order_is_accepted_by_redis_with_no_sql_statement():
    user = make_user(balance=1_000)
    product = make_product(price=100, stock_quantity=10)
    intake.order_ids_refill()
    with CaptureQueriesContext(connection) as queries:
        placed = _accept(user, product, quantity=2)
    assert len(queries) == 0, [q["sql"] for q in queries]
    assert placed.order.status == OrderStatus.PENDING_PAYMENT and placed.order.total_amount == 200
    assert not Order.objects.filter(pk=placed.order.id).exists()  # Redis alone holds it
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 8}


def test_an_empty_id_block_is_refilled_from_the_sequence_and_ids_never_repeat():
    user = make_user(balance=10_000)
    product = make_product(price=1, stock_quantity=100)
    synchronous = order_place(user_id=user.id, lines=[OrderLine(product.id, 1, 1)]).order.id
    ids = [_accept(user, product).order.id for _ in range(3)]
    later = order_place(user_id=user.id, lines=[OrderLine(product.id, 1, 1)]).order.id
    assert len(set(ids)) == 3 and synchronous < min(ids) and later not in ids


def test_a_202_is_visible_at_once_in_the_order_its_list_and_then_paid_after_the_drain():
    user = make_user(balance=1_000)
    product = make_product(price=150, stock_quantity=10)
    client = client_for(user)
    response = client.post("/api/v1/orders", order_body(user, (product, 2)), format="json", **ASYNC)
    assert response.status_code == 202, response.json()
    order_id = response.json()["orderId"]
    assert response["Location"] == f"/api/v1/orders/{order_id}"

    detail = client.get(f"/api/v1/orders/{order_id}").json()
    assert detail["status"] == "PENDING_PAYMENT" and [s["step"] for s in detail["progress"]] == ["reserved"]
    reserved_at = detail["progress"][0]["at"]
    assert detail["items"] == [{"productId": product.id, "quantity": 2, "unitPrice": 150}]
    assert [o["orderId"] for o in client.get("/api/v1/orders").json()["results"]] == [order_id]
    assert APIClient().get(f"/api/v1/orders/{order_id}").status_code == 401
    other = make_user()
    assert client_for(other).get(f"/api/v1/orders/{order_id}").status_code == 404

    _drain()

    detail = client.get(f"/api/v1/orders/{order_id}").json()
    assert detail["status"] == "PAID" and detail["paidAmount"] == 300
    assert [s["step"] for s in detail["progress"]] == ["reserved", "paying", "paid"]
    assert detail["progress"][0]["at"] == reserved_at == detail["createdAt"]  # accepted, not written
    assert [o["orderId"] for o in client.get("/api/v1/orders").json()["results"]] == [order_id]
    assert Account.objects.get(user=user).balance == 700 == ledger_balance(user_id=user.id)
    assert on_hand_by_product() == {product.id: 8}
    assert intake.intake_backlog() == 0
    assert not inventory_reconcile().drifted


def test_cancel_before_the_drain_answers_cancelled_and_the_settler_writes_it_so_with_the_stock_back():
    user = make_user(balance=1_000)
    product = make_product(price=100, stock_quantity=10)
    order_id = _accept(user, product, quantity=3).order.id
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 7}

    cancelled = order_cancel(order_id=order_id, user_id=user.id)
    assert cancelled.status == OrderStatus.CANCELLED
    assert client_for(user).post(f"/api/v1/orders/{order_id}/cancel").status_code == 409  # once

    _drain()

    order = Order.objects.get(pk=order_id)
    assert order.status == OrderStatus.CANCELLED and not Payment.objects.exists()
    assert Account.objects.get(user=user).balance == 1_000
    assert on_hand_by_product() == {product.id: 10}
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 10}
    assert not inventory_reconcile().drifted


def test_a_short_balance_in_a_batch_cancels_that_order_alone_and_gives_its_stock_back():
    rich, poor = make_user(balance=1_000), make_user(balance=50)
    product = make_product(price=100, stock_quantity=10)
    paid = _accept(rich, product).order.id
    failed = _accept(poor, product).order.id
    _drain()
    assert Order.objects.get(pk=paid).status == OrderStatus.PAID
    assert Order.objects.get(pk=failed).status == OrderStatus.CANCELLED
    assert Account.objects.get(user=poor).balance == 50 == ledger_balance(user_id=poor.id)
    assert on_hand_by_product() == {product.id: 9}
    assert not inventory_reconcile().drifted
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 9}


def test_an_entry_delivered_again_after_its_commit_is_acknowledged_without_a_second_charge():
    """A settler that died between its commit and its acknowledgement: the next one gets the same
    entries (its own pending list here), finds the orders written and charges nobody again."""
    user = make_user(balance=1_000)
    product = make_product(price=100, stock_quantity=10)
    ids = [_accept(user, product).order.id for _ in range(3)]
    intake.group_ensure()
    entries = intake.entries_read(consumer="dying", count=10, claim_idle_ms=60_000)
    records = intake.entries_claim([e.order_id for e in entries])
    assert sorted(records.orders) == sorted(ids)
    drained = intake.entries_drained
    intake.entries_drained = lambda entries: None  # the settler dies right after its commit...
    try:
        intake_settle_batch(entries)
    finally:
        intake.entries_drained = drained
    assert Payment.objects.count() == 3 and intake.intake_backlog() == 3  # ...unacknowledged

    again = intake.entries_read(consumer="dying", count=10, claim_idle_ms=60_000)
    assert [e.entry_id for e in again] == [e.entry_id for e in entries]
    intake_settle_batch(again)

    assert Payment.objects.count() == 3 and intake.intake_backlog() == 0
    assert Account.objects.get(user=user).balance == 700 == ledger_balance(user_id=user.id)
    assert on_hand_by_product() == {product.id: 7}


@pytest.mark.slow
def test_two_settler_processes_share_the_intake_and_pay_each_order_once():
    users = [make_user(balance=10_000) for _ in range(20)]
    product = make_product(price=10, stock_quantity=1_000)
    settlers = [Settler(name="a", batch_size=7), Settler(name="b", batch_size=7)]
    try:
        ids = race(20, lambda i: [_accept(users[i], product).order.id for _ in range(10)])
        ids = [order_id for batch in ids for order_id in batch]
        wait_for(lambda: Order.objects.filter(pk__in=ids, status=OrderStatus.PAID).count() == 200, timeout=60,
                 what="every accepted order paid")  # fmt: skip
    finally:
        for settler in settlers:
            settler.stop()
    assert Payment.objects.count() == 200
    assert all(s.orders_settled() > 0 for s in settlers), [s.orders_settled() for s in settlers]
    for user in users:
        assert Account.objects.get(user=user).balance == 9_900 == ledger_balance(user_id=user.id)
    assert on_hand_by_product() == {product.id: 800}


def test_parallel_orders_of_one_user_never_pass_its_purchase_limit_nor_its_unpaid_cap(settings):
    settings.ORDER_UNPAID_LIMIT_PER_USER = 5
    settings.ORDER_RATE_LIMIT_PER_USER = 0
    user = make_user(balance=100_000)
    limited = make_product(price=10, stock_quantity=100)
    free = make_product(price=10, stock_quantity=100)
    from inventory.services import product_purchase_limit_set

    product_purchase_limit_set(product=limited, limit=3)

    def attempt(product):
        try:
            return _accept(user, product).order.id
        except Exception as exc:  # the refusals under test
            return getattr(exc, "code", type(exc).__name__)

    outcomes = race(10, lambda i: attempt(limited))
    assert sum(isinstance(o, int) for o in outcomes) == 3
    assert {o for o in outcomes if not isinstance(o, int)} == {"PURCHASE_LIMIT_REACHED"}
    outcomes = race(10, lambda i: attempt(free))
    assert sum(isinstance(o, int) for o in outcomes) == 2  # 3 unpaid already, the cap 5
    assert {o for o in outcomes if not isinstance(o, int)} == {"TOO_MANY_UNPAID_ORDERS"}
    assert redis_counts.available(product_ids=[limited.id, free.id]) == {limited.id: 97, free.id: 98}


def test_a_repriced_or_off_sale_product_is_refused_by_the_intake_and_nothing_is_held():
    user = make_user(balance=1_000)
    product = make_product(price=100, stock_quantity=10)
    redis_counts.redis_client().set(redis_counts.price_key(product.id), 120)
    client = client_for(user)
    response = client.post("/api/v1/orders", order_body(user, (product, 1)), format="json", **ASYNC)
    assert response.status_code == 409 and response.json()["error"]["code"] == "PRICE_CHANGED"
    assert response.json()["error"]["details"]["currentPrices"] == {str(product.id): 120}
    redis_counts.redis_client().set(redis_counts.price_key(product.id), "off")
    response = client.post("/api/v1/orders", order_body(user, (product, 1)), format="json", **ASYNC)
    assert response.status_code == 409 and response.json()["error"]["code"] == "PRODUCT_UNAVAILABLE"
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 10}
    assert intake.intake_backlog() == 0


def test_past_the_backlog_bound_the_intake_answers_503_and_reserves_nothing(settings):
    settings.PAYMENT_BACKLOG_MAX_SECONDS = 0.2
    user = make_user(balance=1_000)
    product = make_product(price=100, stock_quantity=10)
    _accept(user, product)
    import time

    time.sleep(0.3)  # no settler runs: the first order has now waited past the bound
    response = client_for(user).post("/api/v1/orders", order_body(user, (product, 2)), format="json", **ASYNC)
    assert response.status_code == 503 and response.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert int(response["Retry-After"]) >= 1
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 9}
    assert intake.intake_backlog() == 1


def _own_redis(settings, port: int) -> dict:
    return dict(settings.CACHES["default"], LOCATION=f"redis://127.0.0.1:{port}/15")


@pytest.mark.slow
def test_redis_killed_with_accepted_orders_in_the_stream_and_restarted_from_its_file_keeps_every_202(
    tmp_path, settings
):
    """SIGKILL, then a restart from the append-only file (fsync always): the stream, the records
    and the reservations are all there; the rebuild counts the reservations as held, and the
    settler writes every order once, under the new stock epoch."""
    port = free_port()
    own_redis = _own_redis(settings, port)
    process = start_redis_server(port, tmp_path)
    try:
        with override_settings(CACHES={"default": own_redis}):
            users = [make_user(balance=1_000) for _ in range(6)]
            product = make_product(price=100, stock_quantity=50)
            inventory_reconcile()  # stock loaded into our own Redis
            ids = [_accept(user, product, quantity=2).order.id for user in users]
            assert not Order.objects.exists()

            process.kill()  # SIGKILL: Redis dies holding the only copy of six accepted orders
            process.wait()
            process = start_redis_server(port, tmp_path)
            redis_counts.redis_client().connection_pool.disconnect()
            assert intake.intake_backlog() == 6  # replayed from the append-only file
            assert inventory_reconcile().rebuilt  # another run of the server: rebuilt, the six held
            assert redis_counts.available(product_ids=[product.id]) == {product.id: 38}
            settler = Settler(extra_env={"REDIS_TEST_URL": own_redis["LOCATION"]})
            try:
                wait_for(lambda: Order.objects.filter(pk__in=ids, status=OrderStatus.PAID).count() == 6, timeout=60,
                         what="every accepted order paid")  # fmt: skip
            finally:
                settler.stop()
            assert intake.intake_backlog() == 0
            assert not inventory_reconcile().drifted
            assert redis_counts.available(product_ids=[product.id]) == on_hand_by_product() == {product.id: 38}
    finally:
        process.kill()
        process.wait()
    assert Payment.objects.count() == 6
    assert {Account.objects.get(user=u).balance for u in users} == {800}


@pytest.mark.slow
def test_a_settler_killed_between_its_commit_and_its_acknowledgement_charges_no_order_twice():
    """A real settler process, SIGKILLed inside the window (its batch committed, its entries not
    yet acknowledged); another takes its entries over after SETTLE_CLAIM_IDLE_MS."""
    users = [make_user(balance=1_000) for _ in range(5)]
    product = make_product(price=100, stock_quantity=50)
    ids = [_accept(user, product).order.id for user in users]
    dying = Settler(name="dying", extra_env={"SETTLE_PAUSE_BEFORE_ACK_SECONDS": "60"})
    try:
        wait_for(lambda: Payment.objects.count() == 5, what="the batch committed")
        assert intake.intake_backlog() == 5  # committed, not acknowledged
    finally:
        dying.kill()
    survivor = Settler(name="survivor", extra_env={"SETTLE_CLAIM_IDLE_MS": "500"})
    try:
        wait_for(lambda: intake.intake_backlog() == 0, what="the dead settler's entries taken over and acknowledged")
    finally:
        survivor.stop()
    assert Payment.objects.count() == 5
    assert set(Order.objects.filter(pk__in=ids).values_list("status", flat=True)) == {OrderStatus.PAID}
    assert {Account.objects.get(user=u).balance for u in users} == {900}
    assert on_hand_by_product() == {product.id: 45}


@pytest.mark.slow
def test_redis_come_back_empty_loses_its_undrained_orders_charges_none_and_stock_is_rebuilt_exact(tmp_path, settings):
    port = free_port()
    own_redis = _own_redis(settings, port)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    process = start_redis_server(port, tmp_path / "a")
    try:
        with override_settings(CACHES={"default": own_redis}):
            users = [make_user(balance=1_000) for _ in range(4)]
            product = make_product(price=100, stock_quantity=20)
            inventory_reconcile()
            paid = _accept(users[0], product).order.id
            settler_run(until_empty=True)  # one drained...
            lost = [_accept(user, product).order.id for user in users[1:]]  # ...three not
            intake.intake_seen()  # the settlers' last look at the intake before the loss

            process.kill()
            process.wait()
            process = start_redis_server(port, tmp_path / "b")  # its data gone
            redis_counts.redis_client().connection_pool.disconnect()
            lost_before = _lost_orders()
            assert inventory_reconcile().rebuilt
            settler_run(until_empty=True)
            assert _lost_orders() - lost_before == 3
            assert redis_counts.available(product_ids=[product.id]) == on_hand_by_product() == {product.id: 19}
    finally:
        process.kill()
        process.wait()
    assert list(Order.objects.values_list("id", flat=True)) == [paid]
    assert not Order.objects.filter(pk__in=lost).exists() and Payment.objects.count() == 1
    assert [Account.objects.get(user=u).balance for u in users] == [900, 1_000, 1_000, 1_000]


def _lost_orders() -> float:
    return metrics.INTAKE_LOST_ORDERS._value.get()


def test_an_order_whose_id_another_order_took_is_never_dropped_as_delivered_again():
    """Should ids ever be handed out twice (a sequence reset under a stale block), the settler
    refuses to acknowledge the second order as already written: it stays in the intake, its
    units held, and is named in the log."""
    user = make_user(balance=1_000)
    product = make_product(price=100, stock_quantity=10)
    taken = order_place(user_id=user.id, lines=[OrderLine(product.id, 1, 100)]).order.id  # 201, paid
    redis_counts.redis_client().lpush(intake.ID_BLOCK_KEY, taken)  # the next accepted order gets its id
    accepted = _accept(user, product).order.id
    assert accepted == taken
    settler_run(until_empty=False, stop=_stop_after_rounds(3))
    assert intake.intake_backlog() == 1
    assert Payment.objects.count() == 1
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 8}


def _stop_after_rounds(rounds: int):
    from orders.settlement import StopFlag

    class _After(StopFlag):
        def __init__(self):
            super().__init__()
            self.checks = 0

        def is_set(self) -> bool:
            self.checks += 1
            return self.checks > rounds or super().is_set()

    return _After()


@pytest.mark.slow
@pytest.mark.skipif(
    not local.uses_own_database(),
    reason="restarts PostgreSQL: only the project's own server (DATABASE_URL unset)",
)
def test_postgresql_crashing_mid_batch_keeps_every_202_the_intake_gave_and_charges_each_once():
    """Issue 21: orders accepted by Redis alone, a real settler writing them in batches, and
    PostgreSQL stopped in immediate mode with a batch open; after the restart every 202 ends
    exactly once (the stock epoch, which fences each batch, came back unchanged)."""
    users = [make_user(balance=1_000) for _ in range(10)]
    product = make_product(price=100, stock_quantity=100)
    ids = [_accept(u, product).order.id for u in users] + [_accept(u, product, quantity=2).order.id for u in users]
    assert not Order.objects.exists()  # Redis holds them all
    settler = Settler(extra_env={"PAYMENT_GATEWAY_LATENCY_MS": "400"}, batch_size=5)
    try:
        postgres_crashed_mid_batch()
        wait_for(lambda: Order.objects.filter(pk__in=ids, status=OrderStatus.PAID).count() == 20, timeout=90,
                 what="every accepted order paid")  # fmt: skip
    finally:
        settler.stop()

    assert "settlement batch failed" in settler.log_path.read_text()  # it did lose a batch
    assert intake.intake_backlog() == 0
    assert sorted(Payment.objects.values_list("order_id", flat=True)) == sorted(ids)  # one payment each
    for user in users:
        assert Account.objects.get(user=user).balance == 700 == ledger_balance(user_id=user.id)
    assert not inventory_reconcile().drifted
    assert redis_counts.available(product_ids=[product.id]) == on_hand_by_product() == {product.id: 70}


def test_an_order_whose_acceptance_reply_was_lost_is_answered_202_not_503_and_made_once(settings):
    """The intake's script ran, then its reply was lost (the connection cut as Redis answered):
    the order is accepted, so the answer is its 202. A 503 saying nothing was changed would make a
    careful client order it again (seen once in a chaos run)."""
    user = make_user(balance=1_000)
    product = make_product(price=100, stock_quantity=10)
    intake.order_ids_refill()
    intake_sha = hashlib.sha1((Path(intake.__file__).parent / "lua" / "intake.lua").read_bytes()).hexdigest()
    cutter = ReplyCutter(target_port=local.REDIS_PORT, marker=intake_sha.encode())
    through_the_cutter = dict(settings.CACHES["default"], LOCATION=_url_on_port(settings.REDIS_URL, cutter.port))
    try:
        with override_settings(CACHES={"default": through_the_cutter}):
            placed = _accept(user, product, quantity=2)
    finally:
        cutter.close()

    assert cutter.cut.is_set()  # the reply really was lost
    assert placed.order.status == OrderStatus.PENDING_PAYMENT and placed.order.total_amount == 200
    assert [o.order_id for o in intake.accepted_orders_of(user_id=user.id)] == [placed.order.id]  # made once
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 8}
    _drain()
    assert Order.objects.get().pk == placed.order.id and Payment.objects.count() == 1


def _url_on_port(url: str, port: int) -> str:
    return re.sub(r"@127\.0\.0\.1:\d+/", f"@127.0.0.1:{port}/", url)
