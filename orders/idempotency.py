"""Idempotency-Key: the first answer to a key is the answer to every retry with that key.

The first request takes the key before it does anything (an in-progress row, unique per user
and key); a request arriving with the same key meanwhile waits for that answer and replays it,
so racing duplicates never compete for stock or money. The order's own transaction records
its answer on the row; a business error is recorded too (a retry gets the same error, not a
second attempt); after a transient failure (503) the row is dropped, so a retry is a real one.
A row left in progress by a crashed process is taken over after IDEMPOTENCY_STALE_SECONDS.
"""

from __future__ import annotations

import datetime
import time
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import connection
from django.utils import timezone
from rest_framework import status

from accounts.errors import InsufficientBalance
from config.errors import DomainError, ErrorCode, error_body
from coupons.errors import CouponInvalid
from inventory.errors import OutOfStock, ProductNotFound, ProductUnavailable
from orders.errors import IdempotencyKeyReused, PriceChanged
from orders.models import IdempotencyRecord, Order

if TYPE_CHECKING:
    from orders.services import PlacedOrder

IN_PROGRESS = 0  # status_code of a key whose first request has not answered yet

# Answers that are the business's word on the request; transient failures (503) are not kept,
# so a retry after one is a real retry.
REMEMBERED_ERRORS = (
    OutOfStock,
    ProductNotFound,
    ProductUnavailable,
    PriceChanged,
    CouponInvalid,
    InsufficientBalance,
)

_TAKE_SQL = """
INSERT INTO orders_idempotencyrecord
    (user_id, key, request_fingerprint, status_code, response_body, order_id, created_at)
VALUES (%s, %s, %s, 0, '{}', NULL, now())
ON CONFLICT (user_id, key) DO NOTHING
RETURNING id
"""


class RememberedError(DomainError):
    """Replays an error answer given earlier to the same key."""

    def __init__(self, record: IdempotencyRecord):
        error = record.response_body["error"]
        self.code = error["code"]
        self.status_code = record.status_code
        super().__init__(error["message"], details=error.get("details"))


class RequestInProgress(DomainError):
    code = ErrorCode.CONFLICT
    status_code = status.HTTP_409_CONFLICT
    default_message = "A request with this Idempotency-Key is still being processed; retry shortly."


def begin(*, user_id: int, key: str, fingerprint: str) -> PlacedOrder | None:
    """Take the key (None: go ahead), or return the answer of the request that took it.

    Raises IdempotencyKeyReused for another body, RememberedError for a recorded error, and
    RequestInProgress if the first request is still running after IDEMPOTENCY_WAIT_SECONDS.
    """
    deadline = time.monotonic() + settings.IDEMPOTENCY_WAIT_SECONDS
    while True:
        with connection.cursor() as cursor:
            cursor.execute(_TAKE_SQL, [user_id, key, fingerprint])
            if cursor.fetchone() is not None:
                return None
        record = IdempotencyRecord.objects.filter(user_id=user_id, key=key).first()
        if record is None:
            continue  # the holder gave the key up a moment ago: try to take it
        if record.request_fingerprint != fingerprint:
            raise IdempotencyKeyReused()
        if record.status_code != IN_PROGRESS:
            return _replay(record)
        if _take_over_if_stale(record):
            return None
        if time.monotonic() >= deadline:
            raise RequestInProgress()
        time.sleep(0.02)


def _take_over_if_stale(record: IdempotencyRecord) -> bool:
    stale = timezone.now() - datetime.timedelta(seconds=settings.IDEMPOTENCY_STALE_SECONDS)
    if record.created_at >= stale:
        return False
    return bool(
        IdempotencyRecord.objects.filter(pk=record.pk, status_code=IN_PROGRESS, created_at=record.created_at).update(
            created_at=timezone.now()
        )
    )


def _replay(record: IdempotencyRecord) -> PlacedOrder:
    from orders.services import PlacedOrder

    if record.order_id is None:
        raise RememberedError(record)
    order = Order.objects.prefetch_related("items").get(pk=record.order_id)
    order.items_cache = list(order.items.all())
    return PlacedOrder(order=order, status_code=record.status_code, replayed=True)


def record_order(*, user_id: int, key: str, order_id: int, status_code: int) -> None:
    """Inside the order's transaction: the key's answer commits with the order, or not at all."""
    IdempotencyRecord.objects.filter(user_id=user_id, key=key).update(order_id=order_id, status_code=status_code)


def record_error(*, user_id: int, key: str, error: DomainError) -> None:
    IdempotencyRecord.objects.filter(user_id=user_id, key=key, status_code=IN_PROGRESS).update(
        status_code=error.status_code, response_body=error_body(error.code, error.message, error.details)
    )


def give_up(*, user_id: int, key: str) -> None:
    """After a transient failure: drop the in-progress row so that a retry is a real retry."""
    IdempotencyRecord.objects.filter(user_id=user_id, key=key, status_code=IN_PROGRESS).delete()


def purge_expired() -> int:
    """Forget answers older than IDEMPOTENCY_KEY_TTL_HOURS (48 h by default)."""
    cutoff = timezone.now() - datetime.timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS)
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=cutoff).delete()
    return deleted
