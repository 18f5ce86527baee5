"""The old design, kept to measure against (ORDER_STRATEGY=old): the report's stock path.

A Redis lock per product (SET NX PX), taken in product-id order, retried every
LEGACY_LOCK_RETRY_MS and given up after LEGACY_LOCK_WAIT_MS with 409 LOCK_TIMEOUT; under the
locks, the stock is read from the database and decremented inside the order's one long
transaction. It is correct (the locks serialise each product) but slow under contention:
every order on a product waits for the previous one's whole transaction.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from rest_framework import status

from config import metrics
from config.errors import DomainError
from inventory import stock
from inventory.errors import OutOfStock
from inventory.models import StockMovement

logger = logging.getLogger(__name__)
LOCK_PREFIX = "lock:product:"


class LockTimeout(DomainError):
    code = "LOCK_TIMEOUT"
    status_code = status.HTTP_409_CONFLICT
    default_message = "Could not lock the product's stock in time; nothing was ordered."


def _acquire(key: str, value: str) -> bool:
    client = stock.redis_client()
    ttl_ms = settings.LEGACY_LOCK_TTL_MS
    deadline = time.monotonic() + settings.LEGACY_LOCK_WAIT_MS / 1000
    while True:
        if client.set(key, value, nx=True, px=ttl_ms):
            return True
        if time.monotonic() >= deadline:
            return False
        metrics.LEGACY_LOCK_RETRIES.inc()
        time.sleep(settings.LEGACY_LOCK_RETRY_MS / 1000)


@contextmanager
def product_locks(product_ids: list[int]) -> Iterator[None]:
    """Hold a Redis lock on every product, taken in id order (no deadlock between orders)."""
    value = secrets.token_hex(8)
    held: list[str] = []
    try:
        for product_id in sorted(product_ids):
            key = f"{LOCK_PREFIX}{product_id}"
            if not _acquire(key, value):
                metrics.LEGACY_LOCK_TIMEOUTS.inc()
                raise LockTimeout(details={"productId": product_id})
            held.append(key)
        yield
    finally:
        for key in reversed(held):
            stock.run_script("unlock", keys=[key], args=[value])


def stock_take_locked(*, quantities: dict[int, int], reference: str) -> None:
    """Under the product locks and inside the order's transaction: check and take the stock.

    Writes the same ledger rows as the new design, and moves Redis's count after the commit so
    both designs leave the same state behind for the invariant checks.
    """
    on_hand = dict(
        StockMovement.objects.filter(product_id__in=list(quantities))
        .values("product_id")
        .annotate(total=Sum("quantity"))
        .values_list("product_id", "total")
    )
    for product_id, quantity in sorted(quantities.items()):
        if on_hand.get(product_id, 0) < quantity:
            raise OutOfStock(
                details={"productId": product_id, "requested": quantity, "available": on_hand.get(product_id, 0)}
            )
    StockMovement.objects.bulk_create(
        StockMovement(product_id=pid, quantity=-qty, kind=StockMovement.Kind.SALE, reference=reference)
        for pid, qty in quantities.items()
    )

    taken = {pid: -qty for pid, qty in quantities.items()}
    transaction.on_commit(lambda: stock.shift_available(quantities=taken), robust=True)
