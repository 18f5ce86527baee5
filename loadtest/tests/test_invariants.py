"""The invariant checker on a small seeded shop: it passes after real orders, and it catches
each kind of damage a broken order path could leave behind."""

import datetime
import io
import uuid

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from inventory import redis_counts
from inventory.models import StockReservation
from inventory.reconciliation import inventory_forget_sold
from loadtest.invariants import Baseline, check_invariants
from loadtest.seeding import SeedShape, seed
from orders import events
from orders.models import IdempotencyRecord, OrderEvent
from orders.services import OrderLine, order_cancel, order_place

SHAPE = SeedShape(users=4, products=2, stock=20, balance=1_000, price=3)


def place(user_id: int, quantities: dict[int, int]) -> int:
    lines = [OrderLine(product_id=pid, quantity=qty, seen_price=SHAPE.price) for pid, qty in quantities.items()]
    return order_place(user_id=user_id, lines=lines).order.id


@pytest.fixture
def shop():
    """Seeded, with three orders placed (one of them cancelled): three 201 answers."""
    seed(SHAPE)
    place(1, {1: 3})
    place(2, {1: 1, 2: 4})
    cancelled = place(3, {2: 2})
    order_cancel(order_id=cancelled, user_id=3)
    return Baseline.from_shape(SHAPE)


def failed(checks) -> set[str]:
    return {check.name for check in checks if not check.ok}


def raw_sql(statement: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement)


@pytest.mark.django_db(transaction=True)
def test_invariants_hold_after_real_orders_and_a_cancellation(shop):
    checks = check_invariants(baseline=shop, orders_answered=3)

    assert failed(checks) == set(), [c for c in checks if not c.ok]
    assert {c.name for c in checks} >= {"stock conserved", "money conserved", "redis matches database"}


@pytest.mark.django_db(transaction=True)
def test_invariants_hold_after_the_history_is_trimmed_and_orders_go_on(shop):
    while events.events_relay():
        pass
    inventory_forget_sold(older_than_seconds=0)  # Redis tracks none of them any more
    month_ago = timezone.now() - datetime.timedelta(days=30)
    for model in (OrderEvent, StockReservation, IdempotencyRecord):
        model.objects.update(created_at=month_ago)

    call_command("trim_history", "--batch-size", "2", stdout=io.StringIO())

    assert not OrderEvent.objects.exists() and not StockReservation.objects.exists()
    place(4, {1: 2, 2: 1})
    checks = check_invariants(baseline=shop, orders_answered=4)
    assert failed(checks) == set(), [c for c in checks if not c.ok]


BREAKAGES = {
    "a sale vanished from the stock ledger": (
        lambda: raw_sql("DELETE FROM inventory_stockmovement WHERE id = "
                        "(SELECT min(id) FROM inventory_stockmovement WHERE kind = 'SALE')"),
        {"stock conserved", "redis matches database"},
    ),
    "a balance changed behind the ledger": (
        lambda: raw_sql("UPDATE accounts_account SET balance = balance + 7 WHERE user_id = 2"),
        {"money conserved", "balances match ledger"},
    ),
    "a payment row was lost": (
        lambda: raw_sql("DELETE FROM payments_payment WHERE user_id = 1"),
        {"money conserved", "paid orders have payments"},
    ),
    "redis holds the wrong available count": (
        lambda: redis_counts.redis_client().incrby(redis_counts.stock_key(1), 5),
        {"redis matches database"},
    ),
    "a reservation was left in flight": (
        lambda: redis_counts.reserve(token=uuid.uuid4(), quantities={2: 1}),
        {"redis matches database"},
    ),
}  # fmt: skip


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_invariant_checker_catches(shop, breakage):
    damage, expected_failures = BREAKAGES[breakage]
    damage()

    assert failed(check_invariants(baseline=shop, orders_answered=3)) == expected_failures


@pytest.mark.django_db(transaction=True)
def test_orders_must_match_the_201_answers_k6_counted(shop):
    checks = check_invariants(baseline=shop, orders_answered=4)

    assert failed(checks) == {"orders match 201 answers"}


@pytest.mark.django_db(transaction=True)
def test_sellout_must_leave_exactly_zero_stock(shop):
    assert failed(check_invariants(baseline=shop, orders_answered=3, sold_out_expected=True)) == {"sold out exactly"}

    place(4, {1: 16, 2: 16})  # everything that is left

    assert failed(check_invariants(baseline=shop, orders_answered=4, sold_out_expected=True)) == set()
