"""The async scenario's checks: they catch an order left unpaid and events that miss a change."""

import pytest

from loadtest.async_run import async_checks
from loadtest.seeding import SeedShape, seed
from orders.models import OrderEvent
from orders.services import OrderLine, order_place
from orders.settlement import orders_settle_batch

pytestmark = pytest.mark.django_db(transaction=True)


def _held(checks):
    return {check.name: check.ok for check in checks}


def test_async_checks_pass_once_every_order_is_paid_and_catch_what_is_not():
    seed(SeedShape(users=3, products=2, stock=100, balance=1_000))
    order_place(user_id=1, lines=[OrderLine(1, 2, 1)], asynchronous=True)
    second = order_place(user_id=2, lines=[OrderLine(2, 1, 1)], asynchronous=True).order

    orders_settle_batch(limit=1)  # the oldest: first
    assert _held(async_checks()) == {"every 202 ended PAID or CANCELLED": False, "events equal status changes": False}

    orders_settle_batch(limit=1)
    assert _held(async_checks()) == {"every 202 ended PAID or CANCELLED": True, "events equal status changes": True}

    OrderEvent.objects.filter(order=second, type="order.payment_started").delete()
    assert _held(async_checks())["events equal status changes"] is False
