"""The backlog bound of asynchronous payment: new asynchronous orders wait at the door (503)
rather than in a queue that grows for minutes."""

from __future__ import annotations

import threading
import time

from django.conf import settings

from kernel.database import sql_one
from orders.errors import PaymentBacklogFull
from orders.models import PENDING_SQL

# Served by the partial index orders_order_pending: one index probe.
_OLDEST_PENDING_SQL = (
    "SELECT EXTRACT(EPOCH FROM clock_timestamp() - created_at) "
    f"FROM orders_order WHERE {PENDING_SQL} ORDER BY id LIMIT 1"
)
_backlog = threading.local()


def payment_backlog_seconds() -> float:
    """How long the oldest unpaid order has waited: the seconds of work ahead of a new one.

    Read at most every PAYMENT_BACKLOG_CHECK_SECONDS per thread (one index probe), so the
    check costs the order path nothing measurable."""
    now = time.monotonic()
    if getattr(_backlog, "expires", 0.0) <= now:
        row = sql_one(_OLDEST_PENDING_SQL, [])
        _backlog.seconds = float(row[0]) if row else 0.0
        _backlog.expires = now + settings.PAYMENT_BACKLOG_CHECK_SECONDS
    return _backlog.seconds


def payment_backlog_forget() -> None:
    """Read the backlog afresh at the next check (tests: each starts from what the database says)."""
    _backlog.expires = 0.0


def payment_backlog_check() -> None:
    """Refuse a new asynchronous order while payment is more than PAYMENT_BACKLOG_MAX_SECONDS
    behind (503 with Retry-After, before anything is reserved)."""
    behind = payment_backlog_seconds()
    limit = settings.PAYMENT_BACKLOG_MAX_SECONDS
    if behind > limit:
        raise PaymentBacklogFull(
            details={"backlogSeconds": round(behind, 1), "limitSeconds": limit},
            retry_after=max(1, min(30, round(behind - limit))),
        )
