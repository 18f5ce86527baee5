"""Past orders seeded set-based: consistent with every invariant, refused when they do not fit,
and what the periodic jobs then find in them."""

from __future__ import annotations

import datetime
import io

import pytest
from django.core.management import call_command
from django.db.models import Max, Min
from django.utils import timezone

from accounts.models import Account, BalanceEntry
from devtools.testing import client_for, order_body
from inventory.models import Product, StockMovement
from loadtest.history import CANCEL_EVERY, KEYED_EVERY
from loadtest.invariants import Baseline, check_invariants
from loadtest.jobs import time_periodic_jobs
from loadtest.runner import RunOptions
from loadtest.seeding import SeedRefused, SeedShape, seed
from orders.models import IdempotencyRecord, Order, OrderEvent, OrderItem, OrderStatus
from payments.models import Payment, Refund

pytestmark = pytest.mark.django_db(transaction=True)

SHAPE = SeedShape(users=30, products=4, stock=10_000, balance=10_000, price=3, orders=2_000, history_days=20)


@pytest.mark.slow
def test_past_orders_hold_every_invariant_and_new_orders_go_on_after_them():
    seed(SHAPE)

    cancelled = Order.objects.filter(status=OrderStatus.CANCELLED).count()
    assert Order.objects.count() == 2_000 and Order.objects.aggregate(Max("id"))["id__max"] == 2_000
    assert 0 < cancelled < 2_000 / CANCEL_EVERY * 2  # about one in CANCEL_EVERY
    assert Order.objects.exclude(status__in=[OrderStatus.PAID, OrderStatus.CANCELLED]).count() == 0
    assert Payment.objects.count() == 2_000 and Refund.objects.count() == cancelled
    assert Payment.objects.filter(status=Payment.Status.REFUNDED).count() == cancelled
    assert OrderEvent.objects.count() == 2 * 2_000 + cancelled
    assert not OrderEvent.objects.filter(published_at__isnull=True).exists()
    assert IdempotencyRecord.objects.count() == 2_000 // KEYED_EVERY
    assert not OrderItem.objects.exclude(unit_price=3).exists()  # at the product's price
    assert StockMovement.objects.filter(kind=StockMovement.Kind.RETURN).values("reference").distinct().count() == (
        cancelled
    )
    span = Order.objects.aggregate(first=Min("created_at"), last=Max("created_at"))
    assert timezone.now() - span["first"] > datetime.timedelta(days=19) and span["last"] < timezone.now()
    for account in Account.objects.all():  # each balance_after is the running balance
        entries = list(
            BalanceEntry.objects.filter(account=account).order_by("id").values_list("amount", "balance_after")
        )
        running = 0
        for amount, balance_after in entries:
            running += amount
            assert balance_after == running
        assert running == account.balance and account.version == len(entries) - 1
    assert all(check.ok for check in check_invariants(baseline=Baseline.from_shape(SHAPE), orders_answered=0))

    user = Account.objects.order_by("user_id").first().user
    answer = client_for(user).post("/api/v1/orders", order_body(user, (Product.objects.get(pk=1), 2)), format="json")

    assert answer.status_code == 201 and answer.json()["orderId"] == 2_001
    checks = check_invariants(baseline=Baseline.from_shape(SHAPE), orders_answered=1)
    assert all(check.ok for check in checks), [c for c in checks if not c.ok]
    assert not all(c.ok for c in check_invariants(baseline=Baseline.from_shape(SHAPE), orders_answered=2))


@pytest.mark.parametrize(
    ("too_big", "named"),
    [({"stock": 50}, "stock of product"), ({"balance": 20}, "balance below zero")],
)
def test_a_history_the_shape_cannot_carry_is_refused_and_the_previous_seed_stays(too_big, named):
    seed(SeedShape(users=3, products=2, stock=10))
    with pytest.raises(SeedRefused, match=named):
        seed(SeedShape(users=5, products=2, price=3, orders=500, **({"stock": 100_000, "balance": 100_000} | too_big)))
    assert Account.objects.count() == 3 and Product.objects.count() == 2 and not Order.objects.exists()


def test_the_command_writes_history_with_progress_and_the_jobs_then_trim_what_is_past_retention(settings):
    out = io.StringIO()
    call_command("seed_loadtest", users=20, products=3, orders=1_200, history_days=10, stdout=out)
    assert "past orders: 1,200 of 1,200 (100%)" in out.getvalue()
    old_events = OrderEvent.objects.filter(
        created_at__lt=timezone.now() - datetime.timedelta(days=settings.ORDER_EVENTS_RETENTION_DAYS)
    ).count()
    assert old_events > 0

    timings = {timing.job: timing for timing in time_periodic_jobs()}

    assert timings["trim events (hourly), first run"].outcome.startswith(f"{old_events:,} deleted")
    assert timings["trim events (hourly), next run"].outcome.startswith("0 deleted")
    assert timings["reconciliation (every minute)"].outcome == "3 products checked, 0 drifted"
    assert IdempotencyRecord.objects.count() < 1_200 // KEYED_EVERY  # the keys older than their 48 h


def test_comparing_shapes_needs_another_shape_and_not_the_strategy_comparison():
    assert any("--compare-shapes compares" in p for p in RunOptions(compare_shapes=True).problems())
    assert any("choose one" in p for p in RunOptions(compare=True, compare_shapes=True, shape=SHAPE).problems())
    assert RunOptions(compare_shapes=True, shape=SHAPE).problems() == []
