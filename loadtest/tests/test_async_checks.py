"""The async scenario's parts against the real database: the checks catch an order left unpaid
and events that miss a change; settlers started as a run starts them drain the backlog."""

import subprocess
import sys
import time

import pytest

from loadtest.async_run import async_checks, batch_stats, payment_figures, settler_logs, settlers, wait_until_settled
from loadtest.seeding import SeedShape, seed
from loadtest.server import server_environment
from orders.models import OrderEvent
from orders.services import OrderLine, order_place
from orders.settlement import orders_settle_batch

pytestmark = [
    pytest.mark.usefixtures("database_intake"),
    pytest.mark.django_db(transaction=True),
]  # the database's asynchronous path


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


def test_after_seeded_history_the_checks_and_figures_are_of_the_runs_own_orders():
    shape = SeedShape(users=5, products=2, stock=10_000, balance=10_000, orders=300)
    seed(shape)  # past orders, paid inside their request: created and paid events only
    order_place(user_id=1, lines=[OrderLine(1, 2, 1)], asynchronous=True)
    orders_settle_batch(limit=10)

    assert _held(async_checks(past=shape.orders)) == {
        "every 202 ended PAID or CANCELLED": True,
        "events equal status changes": True,
    }
    assert _held(async_checks())["events equal status changes"] is False  # the history's events differ
    figures = payment_figures(samples=[], drained_after_s=0.0, past=shape.orders)
    assert (figures.orders, figures.paid, figures.cancelled) == (1, 1, 0)


def test_orders_paid_in_their_request_beside_202s_pass_only_when_the_run_made_both():
    seed(SeedShape(users=3, products=2, stock=100, balance=1_000))
    order_place(user_id=1, lines=[OrderLine(1, 2, 1)], asynchronous=False)  # 201: created, paid
    order_place(user_id=2, lines=[OrderLine(2, 1, 1)], asynchronous=True)
    orders_settle_batch(limit=10)

    assert _held(async_checks(paid_in_request_too=True))["events equal status changes"] is True
    assert _held(async_checks())["events equal status changes"] is False


def test_waiting_for_the_drain_gives_up_when_no_settler_is_left_and_says_so_before_its_timeout():
    seed(SeedShape(users=1, products=1, stock=10, balance=10))
    order_place(user_id=1, lines=[OrderLine(1, 1, 1)], asynchronous=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    said = []

    assert wait_until_settled(timeout=600, settlers=[dead], echo=said.append) is None
    # Only the dead settlers' message: waiting out the timeout would have said "still PENDING_PAYMENT after".
    assert said == ["  every settler has exited (codes 0) with 1 orders PENDING_PAYMENT; see their logs"]


def _wait_until_listening(log_dir, count: int, timeout: float = 30.0) -> None:
    """Until each settler has said it waits (its SIGTERM handler is in place by then)."""
    deadline = time.monotonic() + timeout
    while sum("waiting for orders" in text for text in settler_logs(log_dir)) < count:
        assert time.monotonic() < deadline, settler_logs(log_dir)
        time.sleep(0.05)


@pytest.mark.slow
def test_a_settler_beside_the_run_drains_the_backlog_and_stops_cleanly_on_sigterm(tmp_path):
    seed(SeedShape(users=3, products=2, stock=100, balance=1_000))

    with settlers(count=2, env=server_environment(strategy="new"), log_dir=tmp_path) as processes:
        _wait_until_listening(tmp_path, count=2)
        for user_id in (1, 2, 3):
            order_place(user_id=user_id, lines=[OrderLine(1, 2, 1)], asynchronous=True)
        drained_after = wait_until_settled(timeout=60, settlers=processes)

    assert drained_after is not None and drained_after == round(drained_after, 1)
    assert [process.returncode for process in processes] == [0, 0]  # SIGTERM: the batch finished, exit 0
    assert batch_stats(settler_logs(tmp_path)).paid == 3
    assert _held(async_checks()) == {"every 202 ended PAID or CANCELLED": True, "events equal status changes": True}
