"""The asynchronous scenario's extra parts: a Celery worker beside gunicorn, the queue depth
sampled every second, waiting for the queue to drain, time from 202 to PAID, and its checks.

Time to PAID is read from the order events (outbox rows, stamped when written): from
`order.created` to `order.paid` of each order.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import connection
from django.db.models import Count, Q

from inventory.stock import redis_client
from loadtest.invariants import Check, _check
from loadtest.results import percentile
from orders import events
from orders.models import Order, OrderEvent, OrderStatus

QUEUE_KEY = "celery"  # Celery's default queue: a Redis list
SETTLE_TIMEOUT_S = 600.0


@dataclass
class QueueSample:
    second: int
    depth: int
    pending_orders: int


@dataclass
class PaymentFigures:
    orders: int
    paid: int
    cancelled: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    max_queue_depth: int
    drained_after_s: float
    queue: list[QueueSample] = field(default_factory=list, repr=False)


@contextlib.contextmanager
def celery_worker(*, env: dict[str, str], log_path: Path, concurrency: int = 2) -> Iterator[subprocess.Popen]:
    """A Celery worker on the same database and Redis as the server under test."""
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel", "WARNING",
         "--concurrency", str(concurrency), "--without-gossip", "--without-mingle"],
        cwd=settings.BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.close()


class QueueSampler:
    """Samples the payment queue's depth and the orders still unpaid, once a second."""

    def __init__(self) -> None:
        self.samples: list[QueueSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = 0.0

    def __enter__(self) -> QueueSampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            client = redis_client()
            while not self._stop.is_set():
                pending = Order.objects.filter(status=OrderStatus.PENDING_PAYMENT).count()
                second = int(time.monotonic() - self._started)
                self.samples.append(QueueSample(second, client.llen(QUEUE_KEY), pending))
                self._stop.wait(1.0)
        finally:
            connection.close()


def wait_until_settled(*, timeout: float = SETTLE_TIMEOUT_S, echo=print) -> float:
    """Wait until no order is PENDING_PAYMENT; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        pending = Order.objects.filter(status=OrderStatus.PENDING_PAYMENT).count()
        if pending == 0:
            return time.monotonic() - started
        echo(f"  waiting for {pending} payments to finish")
        time.sleep(2)
    return -1.0


def payment_figures(*, queue: list[QueueSample], drained_after_s: float) -> PaymentFigures:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT EXTRACT(EPOCH FROM paid.created_at - created.created_at) * 1000
            FROM orders_orderevent created
            JOIN orders_orderevent paid ON paid.order_id = created.order_id AND paid.type = %s
            WHERE created.type = %s
            """,
            [events.PAID, events.CREATED],
        )
        latencies = sorted(float(row[0]) for row in cursor.fetchall())
    counts = Order.objects.aggregate(
        orders=Count("id"),
        paid=Count("id", filter=Q(status=OrderStatus.PAID)),
        cancelled=Count("id", filter=Q(status=OrderStatus.CANCELLED)),
    )
    return PaymentFigures(
        **counts,
        p50_ms=percentile(latencies, 50) if latencies else 0.0,
        p95_ms=percentile(latencies, 95) if latencies else 0.0,
        p99_ms=percentile(latencies, 99) if latencies else 0.0,
        max_ms=latencies[-1] if latencies else 0.0,
        max_queue_depth=max((s.depth for s in queue), default=0),
        drained_after_s=drained_after_s,
        queue=queue,
    )


def async_checks() -> list[Check]:
    """Every accepted order ended PAID or CANCELLED, and its events are its status changes."""
    unsettled = list(
        Order.objects.exclude(status__in=[OrderStatus.PAID, OrderStatus.CANCELLED]).values_list("id", "status")[:50]
    )
    settled = _check(
        "every 202 ended PAID or CANCELLED",
        [f"order {oid} is {status}" for oid, status in unsettled],
        None,
        "orders unsettled",
        "no order left pending",
    )
    expected = {
        OrderStatus.PAID: [events.CREATED, events.PAYMENT_STARTED, events.PAID],
        OrderStatus.CANCELLED: [events.CREATED, events.PAYMENT_STARTED, events.PAYMENT_FAILED, events.CANCELLED],
    }
    problems = []
    by_order: dict[int, list[str]] = {}
    for order_id, event_type in OrderEvent.objects.order_by("order_id", "id").values_list("order_id", "type"):
        by_order.setdefault(order_id, []).append(event_type)
    total = 0
    for order_id, status in Order.objects.values_list("id", "status"):
        total += 1
        types = by_order.get(order_id, [])
        wanted = expected.get(status)
        # An order cancelled by the expiry job never started paying: created, cancelled.
        allowed = [wanted, [events.CREATED, events.CANCELLED]] if status == OrderStatus.CANCELLED else [wanted]
        if types not in allowed:
            problems.append(f"order {order_id} ({status}): {types}")
    matched = _check(
        "events equal status changes",
        problems,
        total,
        "orders whose events differ",
        f"{total} orders, each with its events in order",
    )
    return [settled, matched]
