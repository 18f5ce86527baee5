"""Idempotency-Key: the first answer to a key is the answer to every retry with that key.

A successful order claims the key inside its own transaction (the unique (user, key) row), so
two racing requests cannot both commit an order: the loser's transaction fails on the unique
index, gives its stock back and replays the winner's order. A failed request remembers its
error in a short transaction of its own, so a retry gets the same error, not a second attempt.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.errors import InsufficientBalance
from config.errors import DomainError, error_body
from coupons.errors import CouponInvalid
from inventory.errors import OutOfStock, ProductNotFound, ProductUnavailable
from orders.errors import IdempotencyKeyReused, PriceChanged
from orders.models import IdempotencyRecord, Order

if TYPE_CHECKING:
    from orders.services import PlacedOrder

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


class KeyTakenConcurrently(Exception):
    """Another request with the same key committed first."""


class RememberedError(DomainError):
    """Replays an error answer given earlier to the same key."""

    def __init__(self, record: IdempotencyRecord):
        error = record.response_body["error"]
        self.code = error["code"]
        self.status_code = record.status_code
        super().__init__(error["message"], details=error.get("details"))


def find(*, user_id: int, key: str, fingerprint: str) -> PlacedOrder | None:
    from orders.services import PlacedOrder

    record = IdempotencyRecord.objects.filter(user_id=user_id, key=key).first()
    if record is None:
        return None
    if record.request_fingerprint != fingerprint:
        raise IdempotencyKeyReused()
    if record.order_id is None:
        raise RememberedError(record)
    order = Order.objects.prefetch_related("items").get(pk=record.order_id)
    order.items_cache = list(order.items.all())
    return PlacedOrder(order=order, status_code=record.status_code, replayed=True)


def claim(*, user_id: int, key: str, fingerprint: str, order_id: int, status_code: int = 201) -> None:
    """Inside the order's transaction: the unique index admits one order per key."""
    try:
        with transaction.atomic():
            IdempotencyRecord.objects.create(
                user_id=user_id,
                key=key,
                request_fingerprint=fingerprint,
                status_code=status_code,
                response_body={},
                order_id=order_id,
            )
    except IntegrityError as exc:
        raise KeyTakenConcurrently() from exc


def remember_error(*, user_id: int, key: str, fingerprint: str, error: DomainError) -> None:
    IdempotencyRecord.objects.bulk_create(
        [
            IdempotencyRecord(
                user_id=user_id,
                key=key,
                request_fingerprint=fingerprint,
                status_code=error.status_code,
                response_body=error_body(error.code, error.message, error.details),
            )
        ],
        ignore_conflicts=True,
    )


def purge_expired() -> int:
    """Forget keys older than IDEMPOTENCY_KEY_TTL_HOURS (48 h by default; at least 24 h)."""
    cutoff = timezone.now() - datetime.timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS)
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=cutoff).delete()
    return deleted
