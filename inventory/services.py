"""Stock: live counts in Redis, the ledger in PostgreSQL, and reconciliation between them.

What is the record, what is derived, when they meet:
- The database ledger (`StockMovement`) is the record: on-hand stock is the sum of its rows.
- Redis holds the available count, derived: on-hand minus the units of reservations whose
  order has not committed yet. Orders reserve there first (one Lua script, all or nothing).
- `StockReservation` settles each reservation for good: SOLD (inserted by the order's own
  transaction) or RELEASED (inserted by reconciliation when it gives up on an order).
- Units coming in (returns, restocks) reach Redis after their commit, each move at most once by
  its token; `PendingMove` lists those reconciliation has not yet seen applied.
- `inventory_reconcile` compares the two, gives back abandoned reservations and repairs drift.
- Redis also mirrors each product's price and whether it is on sale (inv:price:<id>), for orders
  accepted in Redis alone; every change goes through product_update (or product_create,
  product_delete), which keeps the mirror from ever showing a value older than the last commit.
"""

from __future__ import annotations

import datetime
import logging
import math
import time
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Sum

from inventory import redis_counts
from inventory.errors import (
    OutOfStock,
    ProductNotFound,
    ProductUnavailable,
    PurchaseLimitReached,
    RateLimited,
    ReservationLost,
    StockNotLoaded,
    StockTotalTooLarge,
)
from inventory.models import PendingMove, Product, StockMovement, StockReservation
from inventory.queries import RECORD_UNITS, LedgerReference, ReservationToken, StockEpoch, StockSale
from inventory.reconciliation import inventory_reconcile, prices_mirror_load
from inventory.reservations import reservation_mark_released
from inventory.shards import StockShard, shard_named
from kernel.database import sql_all, sql_one
from kernel.errors import DomainError
from kernel.retention import Progress, TrimResult, statement_batches, trim_in_batches

logger = logging.getLogger(__name__)


def prices_for_order(*, product_ids: list[int]) -> dict[int, int]:
    """The unit price of each product of an order; all must exist and be on sale (prices come
    from here, never from the client)."""
    rows = sql_all("SELECT id, price, active FROM inventory_product WHERE id = ANY(%s)", [product_ids])
    missing = sorted(set(product_ids) - {pid for pid, _, _ in rows})
    if missing:
        raise ProductNotFound(details={"productIds": missing})
    inactive = sorted(pid for pid, _, active in rows if not active)
    if inactive:
        raise ProductUnavailable(details={"productIds": inactive})
    return {pid: price for pid, price, _ in rows}


@dataclass(frozen=True, slots=True)
class Reservation:
    """Units held in Redis for one order: its token, the epoch of each stock shard it holds units
    on (shard tag -> epoch), and the user it holds them for (purchase limits; None for an
    adjustment)."""

    token: uuid.UUID
    epochs: dict[str, int]
    holder: int | None = None

    @property
    def shards(self) -> list[StockShard]:
        return [shard_named(tag) for tag in self.epochs]


def stock_reserve(
    *, quantities: dict[int, int], holder: int | None = None, counters: tuple[redis_counts.AdmissionCounter, ...] = ()
) -> Reservation:
    """Take units of every product in Redis at once, or none, for `holder` (a user id), within
    each product's purchase limit, once each of `counters` admits it.

    Safe because one Lua script counts the admission, checks stock and the holder's limits and
    decrements all items atomically: parallel orders of one holder cannot pass a limit together.
    A crash after it leaves the reservation tracked with its time; reconciliation gives it back
    later unless the order committed. Raises RateLimited (with Retry-After), OutOfStock or
    PurchaseLimitReached (naming the item), or StockNotLoaded.
    """
    token = uuid.uuid4()
    result = redis_counts.reserve(token=token, quantities=quantities, holder=holder, counters=counters)
    if result.ok:
        return Reservation(token=token, epochs=result.epochs, holder=holder)
    raise stock_refusal(result, quantities=quantities)


def stock_refusal(result: redis_counts.ReserveResult, *, quantities: dict[int, int]) -> DomainError:
    """The error a refused reservation comes to (a script that reserves as reserve.lua does, such
    as orders' intake, answers the same way). Stock not loaded starts the rebuild first."""
    if not result.loaded:
        _rebuild_if_lost()
        return StockNotLoaded()
    if result.refused_by is not None:
        counter = result.refused_by
        return RateLimited(
            details={"scope": counter.scope, "limit": counter.limit, "windowSeconds": counter.window_ms / 1000},
            retry_after=max(1, math.ceil(result.retry_after_ms / 1000)),
        )
    if result.limit is not None:
        return PurchaseLimitReached(
            details={
                "productId": result.failed_product_id,
                "limit": result.limit,
                "alreadyHeld": result.held,
                "requested": quantities[result.failed_product_id],
            }
        )
    return OutOfStock(
        details={
            "productId": result.failed_product_id,
            "requested": quantities[result.failed_product_id],
            "available": max(result.available or 0, 0),
        }
    )


def stock_release(*, reservation: Reservation) -> bool:
    """Give back a reservation whose order failed, unless its sale committed after all.

    An error can reach the caller after the COMMIT went through (a lost connection on COMMIT,
    a worker stopped right after it), so the database decides, as for reconciliation: the
    RELEASED row goes in first, and only a reservation that is RELEASED is given back (the Lua
    script releases a token at most once). If the database cannot be reached, the reservation
    stays tracked and reconciliation settles it after the grace period.
    """
    token = reservation.token
    return reservation_mark_released(str(token)) and redis_counts.release(token=token, shards=reservation.shards)


# --- Recording a sale: the reservation settled SOLD and its ledger rows, fenced by the epoch --
# (the statements and fragments in inventory/queries.py; an order's own statement composes them)


def stock_record_sale(*, reservation: Reservation, quantities: dict[int, int], reference: str) -> None:
    """Write the sale into the ledger, inside the caller's transaction (the order's)."""
    _record_reserved_units(reservation=reservation, quantities=quantities, kind=StockMovement.Kind.SALE,
                           reference=reference)  # fmt: skip


def _record_reserved_units(
    *, reservation: Reservation, quantities: dict[int, int], kind: str, reference: str, reason: str = ""
) -> None:
    """Turn a Redis reservation into ledger rows, inside the caller's transaction, or raise
    ReservationLost: reconciliation released it, or Redis lost it and stock was rebuilt since
    (the epoch moved on)."""
    params = RECORD_UNITS.bind(
        ReservationToken(token=reservation.token),
        StockEpoch.of(reservation.epochs),
        StockSale.of(reservation=reservation, quantities=quantities, kind=kind, reason=reason),
        LedgerReference(reference=reference),
    )
    try:
        (recorded,) = sql_one(RECORD_UNITS.text, params)
    except IntegrityError as exc:
        raise ReservationLost() from exc
    if not recorded:
        raise ReservationLost()


def stock_return(*, quantities: dict[int, int], reference: str, holder: int | None = None) -> None:
    """Put sold units back (an order was cancelled): ledger now, Redis once the caller commits,
    the units then leaving `holder`'s purchase-limit holdings too (_stock_move_in)."""
    _stock_move_in(quantities=quantities, kind=StockMovement.Kind.RETURN, reference=reference, holder=holder)


def _stock_move_in(
    *, quantities: dict[int, int], kind: str, reference: str = "", reason: str = "", holder: int | None = None
) -> None:
    """Units coming in (a return, a restock): the ledger rows and the move's PendingMove row,
    in the caller's transaction, then the units into Redis (and off `holder`'s holdings) once it
    commits.

    Safe because the rows share one token, which move.lua applies at most once: this step after
    the commit and reconciliation's repair may both try it, and reconciliation counts a move
    committed but not yet applied (or applied but not yet in its database snapshot) as pending,
    not drift. A crash between the commit and the Redis step leaves Redis short (never over) and
    the holder's holdings high (a limit refusing too early, never too late) until reconciliation
    applies the move.
    """
    token = uuid.uuid4()
    with transaction.atomic(savepoint=False):  # the rows and the pending move commit together
        StockMovement.objects.bulk_create(
            StockMovement(
                product_id=pid,
                quantity=qty,
                kind=kind,
                reference=reference,
                reason=reason,
                holder=holder,
                move_token=token,
            )
            for pid, qty in quantities.items()
        )
        PendingMove.objects.create(token=token)
        move = {str(token): redis_counts.Units(items=dict(quantities), holder=holder)}
        transaction.on_commit(lambda: redis_counts.apply_moves(moves=move), robust=True)


# The most stock a product may have. Redis's scripts count in Lua's doubles, exact only up to
# 2**53, and reconciliation's repair of a drift past about 10**17 fails (Lua writes it "1e+17",
# which INCRBY refuses), at every run after; Redis's counter itself overflows at 2**63 - 1, after
# the ledger row committed. A thousand trillion units is far past any real stock, and a drift of
# twice it is still counted exactly.
STOCK_TOTAL_MAX = 10**15


def stock_adjust(
    *, product: Product, quantity: int, reason: str, reference: str = "admin", kind: str = StockMovement.Kind.ADJUSTMENT
) -> None:
    """Add (or with a negative quantity, remove) units: ledger and Redis in one step.

    Removing only succeeds if Redis has that many units available, so an adjustment can never
    take units that orders already hold. Redis first for removals (a crash before the commit
    leaves a reservation reconciliation gives back), database first for additions (a move
    applied once: _stock_move_in). Raises OutOfStock (a removal), StockTotalTooLarge (an
    addition past STOCK_TOTAL_MAX).
    """
    if quantity == 0:
        return
    if quantity < 0:
        reservation = stock_reserve(quantities={product.id: -quantity})
        try:
            with transaction.atomic():
                _record_reserved_units(reservation=reservation, quantities={product.id: -quantity}, kind=kind,
                                       reference=reference, reason=reason)  # fmt: skip
        except Exception:
            stock_release(reservation=reservation)
            raise
        return
    with transaction.atomic():
        # Two additions at once would each see room for itself: the product's row, locked FOR NO
        # KEY UPDATE, puts them one after the other. Orders never wait for it (the key share lock
        # their ledger rows take does not conflict with it). Nothing else raises stock past what
        # it was: a return gives back units sold before.
        Product.objects.select_for_update(no_key=True).get(pk=product.pk)
        on_hand = StockMovement.objects.filter(product=product).aggregate(total=Sum("quantity"))["total"] or 0
        if on_hand + quantity > STOCK_TOTAL_MAX:
            raise StockTotalTooLarge(
                f"A product holds at most {STOCK_TOTAL_MAX:,} units; {product} has {on_hand:,}. Nothing was changed.",
                details={"productId": product.id, "onHand": on_hand, "max": STOCK_TOTAL_MAX},
            )
        _stock_move_in(quantities={product.id: quantity}, kind=kind, reference=reference, reason=reason)


def product_purchase_limit_set(*, product: Product, limit: int | None) -> None:
    """Set (or with None, lift) how many units one customer may hold of the product.

    The database first; Redis, where orders check it, once that commits. Holdings of units sold
    before the limit are counted by reconciliation, which runs at once (or, if one is running
    already, at its next turn): until then earlier purchases are not counted against the limit.
    """
    with transaction.atomic():
        Product.objects.filter(pk=product.pk).update(purchase_limit=limit)
        product.purchase_limit = limit

        def load() -> None:
            redis_counts.set_purchase_limit(product_id=product.pk, limit=limit)
            if limit:
                inventory_reconcile()

        transaction.on_commit(load, robust=True)


def product_create(*, name: str, price: int, stock_quantity: int = 0, active: bool = True) -> Product:
    """A product, its initial stock (a restock, applied once: _stock_move_in) and its price
    mirror, written once it commits (prices_mirror_load: from a locked read, so a change that
    commits first is not undone by it; a crash before leaves the key absent until reconciliation)."""
    with transaction.atomic():
        product = Product.objects.create(name=name, price=price, active=active)
        if stock_quantity:
            _stock_move_in(quantities={product.id: stock_quantity}, kind=StockMovement.Kind.RESTOCK,
                           reason="initial stock")  # fmt: skip
        else:  # its count exists, at 0 (adding 0 twice is harmless)
            transaction.on_commit(lambda: redis_counts.add_available(product_id=product.id, quantity=0), robust=True)
        transaction.on_commit(lambda: prices_mirror_load(product_ids=[product.id]), robust=True)
    return product


def product_update(
    *, product: Product, name: str | None = None, price: int | None = None, active: bool | None = None
) -> Product:
    """Change a product's name, price or whether it is on sale (None: unchanged); returns it.

    The rule: a price change or an off-sale, once committed, is honoured by every order accepted
    after the commit, those Redis accepts from its price mirror (inv:price:<id>) included. Safe
    because of the order of the steps: the row is locked first, the mirror key deleted (orders
    meanwhile take the database's path, which shows the old value until the commit: they were
    accepted before it), the row updated; after the commit the key is written again, from a read
    that share-locks the row until the key is written (prices_mirror_load), never from this
    transaction's values, which a later change may have superseded by the time a slow callback
    runs. Reconciliation writes the mirror from the same locked read: it waits for this lock,
    or this waits for its. A crash between the commit and the write, or a rollback after the
    delete, leaves the key absent (the database's path) until reconciliation writes it.

    The lock is FOR NO KEY UPDATE, not FOR UPDATE: it conflicts with the mirror's FOR SHARE read
    and with another change, but not with the FOR KEY SHARE that orders' ledger rows take on the
    product (their foreign key), so orders never wait for an edit. If Redis cannot be reached,
    the delete raises and nothing changes (the mirror could otherwise keep the old value).
    Raises Product.DoesNotExist for a product deleted meanwhile.
    """
    fields = {key: value for key, value in (("name", name), ("price", price), ("active", active)) if value is not None}
    if not fields:
        return product
    mirrored = "price" in fields or "active" in fields
    with transaction.atomic():
        Product.objects.select_for_update(no_key=True).only("id").get(pk=product.pk)
        if mirrored:
            redis_counts.prices_forget(product_ids=[product.pk])
        Product.objects.filter(pk=product.pk).update(**fields)
        for key, value in fields.items():
            setattr(product, key, value)
        if mirrored:
            transaction.on_commit(lambda: prices_mirror_load(product_ids=[product.pk]), robust=True)
    return product


def product_delete(*, product: Product) -> None:
    """Delete a product that has no stock movements (the ledger protects the others:
    ProtectedError) and its price mirror: the key goes while the row is locked, before the
    delete commits, as in product_update; nothing writes it again (a locked read finds no row)."""
    with transaction.atomic():
        Product.objects.select_for_update(no_key=True).only("id").get(pk=product.pk)
        redis_counts.prices_forget(product_ids=[product.pk])
        Product.objects.filter(pk=product.pk).delete()


# One batch of the trim: the oldest settled reservations before the cutoff, by created_at's index.
_TRIM_RESERVATIONS_SQL = f"""
DELETE FROM {StockReservation._meta.db_table} WHERE token IN (
    SELECT token FROM {StockReservation._meta.db_table}
    WHERE created_at < %(cutoff)s ORDER BY created_at LIMIT %(batch_size)s
)
"""


def reservations_trim_cutoff() -> datetime.datetime:
    """Settled reservations created before this may be deleted.

    A SOLD or RELEASED row is what makes a sale and a release of the same reservation mutually
    exclusive (inventory.queries.stock_sale_ctes, _settle_as_released): without it, reconciliation would release a
    reservation that was sold (units counted twice), or a late sale would commit after its
    release. So a row goes only when both are impossible: it is older than
    STOCK_RESERVATION_RETENTION_SECONDS (far beyond the grace period, after which reconciliation
    settles a reservation, and beyond any transaction's life), and older than every reservation
    Redis still tracks, less a grace period for the clocks of the hosts (tracked reservations
    are the ones reconciliation may still settle; a stopped reconciliation keeps them, and so
    keeps their rows). Raises if Redis cannot be asked: no trim then."""
    now = time.time()
    cutoff = now - settings.STOCK_RESERVATION_RETENTION_SECONDS
    oldest_ms = redis_counts.oldest_tracked_ms()
    if oldest_ms is not None:
        cutoff = min(cutoff, oldest_ms / 1000 - settings.STOCK_RESERVATION_GRACE_SECONDS)
    return datetime.datetime.fromtimestamp(cutoff, tz=datetime.UTC)


def inventory_trim_reservations(
    *, batch_size: int | None = None, time_budget_seconds: float | None = None, progress: Progress | None = None
) -> TrimResult:
    """Delete settled reservations past their retention (reservations_trim_cutoff), a batch per
    statement, each its own transaction. A crash between batches leaves the rest for the next run."""
    delete_batch = statement_batches(_TRIM_RESERVATIONS_SQL, {"cutoff": reservations_trim_cutoff()})
    return trim_in_batches(
        "stock reservations", delete_batch, batch_size=batch_size, time_budget_seconds=time_budget_seconds,
        progress=progress,
    )  # fmt: skip


def _rebuild_if_lost() -> None:
    """Redis came back empty: the first order to notice rebuilds stock from the database.
    Within a request it waits at most a few seconds for older transactions (gunicorn's worker
    timeout is 30 s); if they are not done, a later order (or beat's reconciliation) finishes."""
    try:
        inventory_reconcile(rebuild_wait_seconds=5.0)
    except Exception:
        logger.exception("rebuilding stock in Redis failed")
