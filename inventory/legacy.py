"""The old design, kept to measure against (ORDER_STRATEGY=old): the report's stock path.

A Redis lock per product (SET NX PX), taken in product-id order, retried every
LEGACY_LOCK_RETRY_MS and given up after LEGACY_LOCK_WAIT_MS with 409 LOCK_TIMEOUT; under the
locks, the stock is read from the database and decremented inside the order's one long
transaction. It is correct (the locks serialise each product) but slow under contention:
every order on a product waits for the previous one's whole transaction.

A Redis lock ends at its TTL (LEGACY_LOCK_TTL_MS), whether or not the transaction it guards
is over, and nothing bounds that transaction's length (each statement is bounded, not their
sum nor the waits between them). So the stock is read under a database lock too: the order's
transaction takes an advisory lock per product before it reads the stock, held to its commit
or rollback. Nobody waits for it while the Redis locks hold (they already queued the orders);
after one expired, the next holder waits there until the previous transaction is over and then
reads the stock it left. The TTL only frees the products of a holder that died.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Sum
from rest_framework import status

from inventory import redis_counts
from inventory.errors import OutOfStock
from inventory.models import StockMovement
from kernel import metrics
from kernel.database import AdvisoryLock
from kernel.errors import DomainError

logger = logging.getLogger(__name__)
LOCK_PREFIX = "lock:product:"
# Advisory locks (AdvisoryLock.OLD_DESIGN_PRODUCT, product id). Ids past int4 share a lock with
# another product (modulo 2^31): they wait for each other, never wrongly go together.


class LockTimeout(DomainError):
    code = "LOCK_TIMEOUT"
    status_code = status.HTTP_409_CONFLICT
    default_message = "Could not lock the product's stock in time; nothing was ordered."


def _acquire(key: str, value: str) -> bool:
    client = redis_counts.redis_client()
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
            redis_counts.run_script("unlock", keys=[key], args=[value])


def _lock_in_the_database(product_ids: list[int]) -> None:
    """Each product's advisory lock, in id order (as the Redis locks), held to the end of the
    order's transaction; taken before the stock is read, so that the read, a statement of its
    own, sees whatever a transaction that held the lock before committed."""
    with connection.cursor() as cursor:
        for product_id in sorted(product_ids):
            cursor.execute(
                "SELECT pg_advisory_xact_lock(%s::int, %s::int)", [AdvisoryLock.OLD_DESIGN_PRODUCT, product_id % 2**31]
            )


def stock_take_locked(*, quantities: dict[int, int], reference: str) -> None:
    """Under the product locks and inside the order's transaction: check and take the stock.

    Safe because each product's stock is read and taken under its advisory lock (held to the
    commit), as well as its Redis lock, which may have expired meanwhile; a crash rolls back
    the ledger rows, and Redis's count moves only after the commit.
    Writes the same ledger rows as the new design, and moves Redis's count after the commit so
    both designs leave the same state behind for the invariant checks.
    """
    _lock_in_the_database(list(quantities))
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
    transaction.on_commit(lambda: redis_counts.shift_available(quantities=taken), robust=True)
