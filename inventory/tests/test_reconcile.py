"""Reconciliation: crashes between Redis and the database, drift, and Redis losing its data."""

from __future__ import annotations

import threading
import time

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, connections, transaction
from django.test import override_settings

from devtools.testing import (
    client_for,
    free_port,
    make_product,
    make_user,
    order_body,
    race,
    run_in_django_process,
    start_redis_server,
    wait_for,
)
from inventory import redis_counts
from inventory import tasks as inventory_tasks
from inventory.errors import ReservationLost, StockNotLoaded
from inventory.models import StockReservation
from inventory.reconciliation import inventory_forget_sold, inventory_reconcile, on_hand_by_product
from inventory.reservations import stock_epoch
from inventory.services import stock_record_sale, stock_release, stock_reserve
from inventory.shards import stock_shards
from kernel.database import AdvisoryLock
from orders import services
from orders.models import Order

(ONLY_SHARD,) = stock_shards()  # these tests run on one Redis, one shard

pytestmark = pytest.mark.django_db(transaction=True)

CRASH_INSIDE_THE_ORDER_TRANSACTION = """
    import os
    from orders import services
    from orders.services import OrderLine, order_place

    def die_before_commit(**kwargs):
        os._exit(9)  # the process dies with the reservation taken and the transaction open

    services.payment_take = die_before_commit
    # An Idempotency-Key takes the order down the transaction path.
    order_place(user_id={user_id}, lines=[OrderLine({product_id}, 3, {price})], idempotency_key="crash")
"""

CRASH_BEFORE_THE_ORDER_STATEMENT = """
    import os
    from orders import services
    from orders.services import OrderLine, order_place

    def die_before_writing(sql, params):
        os._exit(9)  # the process dies with the reservation taken, before its one statement

    services._run_fenced = die_before_writing
    order_place(user_id={user_id}, lines=[OrderLine({product_id}, 3, {price})])
"""

CRASH_AFTER_THE_RESERVATION = """
    import os
    from inventory.services import stock_reserve

    stock_reserve(quantities={{{product_id}: 4}})
    os._exit(9)
"""


@pytest.mark.parametrize(
    "crash_code", [CRASH_INSIDE_THE_ORDER_TRANSACTION, CRASH_BEFORE_THE_ORDER_STATEMENT, CRASH_AFTER_THE_RESERVATION]
)
def test_a_process_killed_between_reservation_and_commit_gets_its_stock_back_by_reconciliation(crash_code):
    user = make_user(balance=1_000)
    product = make_product(price=10, stock_quantity=20)

    crashed = run_in_django_process(crash_code.format(user_id=user.id, product_id=product.id, price=product.price))

    assert crashed.returncode == 9, crashed.stderr
    assert redis_counts.available(product_ids=[product.id])[product.id] < 20  # the dead process still holds units
    assert Order.objects.count() == 0

    young = inventory_reconcile(grace_seconds=60)  # too young to be called abandoned: held, not drift
    assert young.released_tokens == [] and young.drifted == []
    assert redis_counts.available(product_ids=[product.id])[product.id] < 20

    report = inventory_reconcile(grace_seconds=0)

    assert len(report.released_tokens) == 1
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 20}
    assert on_hand_by_product() == {product.id: 20}
    assert inventory_reconcile(grace_seconds=0).released_tokens == []  # exactly once


def test_a_late_commit_after_reconciliation_released_its_reservation_is_refused():
    product = make_product(price=10, stock_quantity=5)
    reservation = stock_reserve(quantities={product.id: 2})
    inventory_reconcile(grace_seconds=0)
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 5}

    with pytest.raises(ReservationLost), transaction.atomic():
        stock_record_sale(reservation=reservation, quantities={product.id: 2}, reference="late")

    assert on_hand_by_product() == {product.id: 5}
    assert StockReservation.objects.get(token=reservation.token).state == StockReservation.State.RELEASED


def test_reconciliation_keeps_sold_reservations_and_forgets_them_once_the_database_shows_the_sale():
    user = make_user(balance=1_000)
    product = make_product(price=10, stock_quantity=10)
    client_for(user).post("/api/v1/orders", order_body(user, (product, 3)), format="json")
    assert redis_counts.redis_client().zcard(ONLY_SHARD.reservations_key) == 1

    report = inventory_reconcile(grace_seconds=0)

    assert report.released_tokens == [] and report.forgotten_tokens == 1 and report.drifted == []
    assert redis_counts.redis_client().zcard(ONLY_SHARD.reservations_key) == 0
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 7}


def test_drift_is_reported_by_check_and_repaired_by_reconcile():
    product = make_product(price=10, stock_quantity=10)
    redis_counts.add_available(product_id=product.id, quantity=5)  # someone edited Redis by hand

    check = inventory_reconcile(repair=False)
    assert [(p.product_id, p.redis, p.expected, p.drift) for p in check.drifted] == [(product.id, 15, 10, -5)]
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 15}

    inventory_reconcile()
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 10}


def test_check_on_an_empty_redis_says_it_changed_nothing_and_changes_nothing(capsys):
    product = make_product(price=10, stock_quantity=10)
    redis_counts.mark_not_loaded()

    call_command("reconcile_inventory", "--check")

    assert "--check changed nothing" in capsys.readouterr().out
    assert not redis_counts.is_loaded(ONLY_SHARD)
    call_command("reconcile_inventory")
    assert redis_counts.is_loaded(ONLY_SHARD) and redis_counts.available(product_ids=[product.id]) == {product.id: 10}


@pytest.mark.parametrize("interval", ["-5", "0", "nan", "inf"])
def test_reconcile_every_needs_a_positive_interval(interval):
    with pytest.raises(CommandError, match="positive number of seconds"):
        call_command("reconcile_inventory", "--every", interval)


def test_after_redis_comes_back_empty_the_next_order_rebuilds_stock_from_the_database():
    user = make_user(balance=1_000)
    product = make_product(price=10, stock_quantity=10)
    client = client_for(user)
    client.post("/api/v1/orders", order_body(user, (product, 4)), format="json")

    redis_counts.redis_client().flushdb()  # Redis restarted without its data
    refused = client.post("/api/v1/orders", order_body(user, (product, 1)), format="json")
    accepted = client.post("/api/v1/orders", order_body(user, (product, 1)), format="json")

    assert refused.status_code == 503 and refused.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert accepted.status_code == 201
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 5}
    assert inventory_reconcile().drifted == []


def test_a_sale_whose_reservation_redis_lost_cannot_commit_once_stock_is_rebuilt():
    product = make_product(price=10, stock_quantity=10)
    reservation = stock_reserve(quantities={product.id: 2})
    redis_counts.redis_client().flushdb()  # Redis lost its data, the reservation with it
    assert inventory_reconcile().rebuilt  # the rebuild moves the stock epoch on first

    with pytest.raises(ReservationLost), transaction.atomic():
        stock_record_sale(reservation=reservation, quantities={product.id: 2}, reference="lost")

    assert on_hand_by_product() == {product.id: 10}
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 10}


def test_an_async_order_whose_reservation_redis_lost_is_refused_and_writes_nothing():
    user = make_user(balance=1_000)
    product = make_product(price=10, stock_quantity=10)
    reservation = stock_reserve(quantities={product.id: 2})
    redis_counts.redis_client().flushdb()
    inventory_reconcile()

    with pytest.raises(ReservationLost):
        services._accept_order(user_id=user.id, quantities={product.id: 2}, prices={product.id: 10},
                               reservation=reservation)  # fmt: skip

    assert Order.objects.count() == 0 and StockReservation.objects.count() == 0
    assert on_hand_by_product() == {product.id: 10}


def test_a_sale_that_read_the_epoch_before_a_rebuild_is_waited_for_and_counted():
    product = make_product(price=10, stock_quantity=10)
    reservation = stock_reserve(quantities={product.id: 2})
    epoch_before = stock_epoch(ONLY_SHARD)
    sold, may_commit, committed = threading.Event(), threading.Event(), threading.Event()
    rebuilt = []

    def sell_slowly():
        try:
            with transaction.atomic():
                stock_record_sale(reservation=reservation, quantities={product.id: 2}, reference="slow")
                sold.set()
                may_commit.wait(60)
            committed.set()
        finally:
            connection.close()

    def rebuild():
        try:
            report = inventory_reconcile()
            rebuilt.append((report, committed.is_set()))
        finally:
            connection.close()

    seller = threading.Thread(target=sell_slowly)
    seller.start()
    assert sold.wait(30)
    redis_counts.redis_client().flushdb()
    rebuilder = threading.Thread(target=rebuild)
    rebuilder.start()
    # The rebuild has bumped the epoch (its fence) and now waits for the open sale: they overlap.
    wait_for(lambda: stock_epoch(ONLY_SHARD) > epoch_before, what="the rebuild's epoch bump")
    assert rebuilder.is_alive() and not committed.is_set()
    may_commit.set()
    seller.join(60)
    rebuilder.join(60)

    report, finished_after_the_sale = rebuilt[0]
    assert report.rebuilt and finished_after_the_sale  # it waited for the sale's commit
    assert on_hand_by_product() == {product.id: 8}
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 8}


@pytest.mark.slow
def test_reconciliation_running_during_a_stream_of_orders_never_sees_false_drift():
    products = [make_product(price=1, stock_quantity=10_000) for _ in range(2)]
    users = [make_user(balance=100_000) for _ in range(8)]
    clients = [client_for(u) for u in users]
    stop = threading.Event()
    reports = []

    forgotten = []

    def reconcile_repeatedly():
        try:
            while not stop.is_set():
                reports.append(inventory_reconcile(grace_seconds=30))
                # A breath between runs, as beat leaves one: back to back, the reconciler held the
                # lock it shares with forgetting nearly always, and the forgetter once never got it.
                stop.wait(0.02)
        finally:
            connection.close()

    def forget_repeatedly():  # as beat runs it, every few seconds beside reconciliation
        try:
            while not stop.is_set():
                forgotten.append(inventory_forget_sold(older_than_seconds=0, chunk=5))
                stop.wait(0.005)
        finally:
            connection.close()

    reconciler = threading.Thread(target=reconcile_repeatedly)
    forgetter = threading.Thread(target=forget_repeatedly)
    reconciler.start()
    forgetter.start()
    try:

        def place_many(i):
            for n in range(15):
                items = [(products[(i + n) % 2], 1 + n % 3), (products[(i + n + 1) % 2], 1)]
                clients[i].post("/api/v1/orders", order_body(users[i], *items), format="json")

        race(8, place_many)
    finally:
        stop.set()
        reconciler.join()
        forgetter.join()

    assert len(reports) >= 2 and sum(forgotten) > 0
    assert [p for r in reports for p in r.drifted] == []
    final = inventory_reconcile(grace_seconds=0)
    assert final.drifted == []
    counts = redis_counts.available(product_ids=[p.id for p in products])
    assert counts == {pid: units for pid, units in on_hand_by_product().items()}


def test_a_failure_reported_after_the_sale_committed_does_not_give_its_units_back():
    product = make_product(price=10, stock_quantity=5)
    reservation = stock_reserve(quantities={product.id: 2})
    with transaction.atomic():
        stock_record_sale(reservation=reservation, quantities={product.id: 2}, reference="committed")

    assert stock_release(reservation=reservation) is False  # e.g. the COMMIT's answer was lost

    assert redis_counts.available(product_ids=[product.id]) == {product.id: 3} == on_hand_by_product()


def test_after_a_redis_restart_its_replayed_counts_wait_for_a_rebuild(tmp_path, settings):
    """A restarted Redis replays its append-only file, which may lack the last writes (here it
    is fsynced always, but the project's own Redis fsyncs every second, and a failover replica
    may lag); the ready flag it replays names the old run, so orders wait for a rebuild."""
    port = free_port()
    own_redis = dict(settings.CACHES["default"], LOCATION=f"redis://127.0.0.1:{port}/15")
    process = start_redis_server(port, tmp_path)
    try:
        with override_settings(CACHES={"default": own_redis}):
            product = make_product(price=10, stock_quantity=10)
            inventory_reconcile()
            stock_reserve(quantities={product.id: 3})  # its order never commits: abandoned

            process.kill()
            process.wait()
            process = start_redis_server(port, tmp_path)
            redis_counts.redis_client().connection_pool.disconnect()

            assert redis_counts.redis_client().get(ONLY_SHARD.ready_key) is not None  # replayed from the file
            assert not redis_counts.is_loaded(ONLY_SHARD)
            with pytest.raises(StockNotLoaded):
                stock_reserve(quantities={product.id: 1})
            assert redis_counts.is_loaded(ONLY_SHARD)  # the refusal rebuilt it from the database
            assert redis_counts.available(product_ids=[product.id]) == {product.id: 7}  # 3 still in flight
            inventory_reconcile(grace_seconds=0)
            assert redis_counts.available(product_ids=[product.id]) == {product.id: 10}
    finally:
        process.kill()
        process.wait()


def _tracked() -> list[str]:
    return redis_counts.tokens_reserved_before(ONLY_SHARD, cutoff_ms=int(time.time() * 1000) + 60_000)


def test_forgetting_sold_reservations_keeps_the_ones_in_flight_and_reconciliation_exact():
    user = make_user(balance=1_000)
    product = make_product(price=10, stock_quantity=20)
    client = client_for(user)
    for _ in range(3):
        assert client.post("/api/v1/orders", order_body(user, (product, 1)), format="json").status_code == 201
    held = stock_reserve(quantities={product.id: 2})  # its order has not committed
    assert len(_tracked()) == 4

    assert inventory_forget_sold(older_than_seconds=0, chunk=2) == 3  # in chunks, past the one held

    assert _tracked() == [str(held.token)]
    report = inventory_reconcile(grace_seconds=60)
    assert report.drifted == [] and report.forgotten_tokens == 0
    assert [(p.on_hand, p.in_flight, p.redis) for p in report.products] == [(17, 2, 15)]


def test_forgetting_waits_its_turn_while_a_reconciliation_holds_the_lock():
    user = make_user(balance=1_000)
    product = make_product(price=10, stock_quantity=20)
    client_for(user).post("/api/v1/orders", order_body(user, (product, 1)), format="json")
    holder = connections.create_connection("default")  # another session, as another process would
    try:
        with holder.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [AdvisoryLock.STOCK_RECONCILIATION])  # reconciling
            assert inventory_forget_sold(older_than_seconds=0) == 0
            assert len(_tracked()) == 1
            cursor.execute("SELECT pg_advisory_unlock(%s)", [AdvisoryLock.STOCK_RECONCILIATION])
    finally:
        holder.close()
    assert inventory_forget_sold(older_than_seconds=0) == 1


def test_the_periodic_reconciliation_leaves_the_old_designs_counts_alone(settings):
    product = make_product(price=10, stock_quantity=20)
    redis_counts.add_available(product_id=product.id, quantity=-3)  # as an old-design sale, committed, moves it
    settings.ORDER_STRATEGY = "old"

    assert inventory_tasks.reconcile_inventory() == 0

    assert redis_counts.available(product_ids=[product.id]) == {product.id: 17}  # not "repaired" under its feet
    settings.ORDER_STRATEGY = "new"
    assert inventory_tasks.reconcile_inventory() == 1  # the new design's job does repair drift
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 20}
