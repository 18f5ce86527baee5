"""The periodic jobs through a real Celery worker and beat (`make run` starts both), on this
test's database and Redis: a task sent is run by the worker, and beat's schedule reaches it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from devtools.testing import child_environment, make_product, make_user, wait_for
from orders.models import Order, OrderEvent, OrderStatus
from orders.services import OrderLine, order_place
from orders.tasks import expire_pending_orders

pytestmark = [
    pytest.mark.usefixtures("database_intake"),  # the database's asynchronous path (the intake: test_intake.py)
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
]


def _celery(kind: str, *args: str, log: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "celery", "-A", "config", kind, "--loglevel", "INFO", *args]
    with open(log, "wb") as out:
        return subprocess.Popen(command, cwd=settings.BASE_DIR, env=child_environment(extra_env), stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def logs():
    path = Path(settings.BASE_DIR) / "test-output"
    path.mkdir(exist_ok=True)
    return path


def test_a_task_sent_to_the_broker_is_run_by_a_real_worker(logs):
    order = order_place(user_id=make_user(balance=100).id, lines=[OrderLine(make_product(price=10).id, 1, 10)],
                        asynchronous=True).order  # fmt: skip
    worker = _celery("worker", "--concurrency", "1", "--pool", "solo", log=logs / "celery-worker.log",
                     extra_env={"ORDER_PAYMENT_TIMEOUT_SECONDS": "0"})  # fmt: skip
    try:
        expire_pending_orders.delay()  # through Redis, as beat sends it
        wait_for(lambda: Order.objects.get(pk=order.pk).status == OrderStatus.CANCELLED, timeout=90,
                 what="the worker to expire the unpaid order")  # fmt: skip
    finally:
        _stop(worker)
    assert "orders.tasks.expire_pending_orders" in (logs / "celery-worker.log").read_text()


def test_beat_sends_the_schedule_and_the_worker_relays_the_order_events(logs, tmp_path):
    order_place(user_id=make_user(balance=100).id, lines=[OrderLine(make_product(price=10).id, 1, 10)])
    assert OrderEvent.objects.filter(published_at__isnull=True).count() == 2  # created and paid, not yet relayed
    worker = _celery("worker", "--concurrency", "1", "--pool", "solo", log=logs / "celery-worker-beat.log")
    beat = _celery("beat", "--schedule", str(tmp_path / "celerybeat-schedule"), log=logs / "celery-beat.log")
    try:
        # relay-order-events is on beat's schedule every second; nothing else publishes them here.
        wait_for(lambda: not OrderEvent.objects.filter(published_at__isnull=True).exists(), timeout=90,
                 what="beat's relay task run by the worker")  # fmt: skip
    finally:
        _stop(beat)
        _stop(worker)
    assert "Sending due task relay-order-events" in (logs / "celery-beat.log").read_text()
