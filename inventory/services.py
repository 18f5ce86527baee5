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
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import time
import uuid
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass, field

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Sum

from inventory import stock
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
from kernel import metrics
from kernel.database import AdvisoryLock, sql_all, sql_one
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
    """Units held in Redis for one order: its token, the stock epoch it was made under, and
    the user it holds them for (purchase limits; None for an adjustment)."""

    token: uuid.UUID
    epoch: int
    holder: int | None = None


def stock_reserve(
    *, quantities: dict[int, int], holder: int | None = None, counters: tuple[stock.AdmissionCounter, ...] = ()
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
    result = stock.reserve(token=token, quantities=quantities, holder=holder, counters=counters)
    if result.ok:
        return Reservation(token=token, epoch=result.epoch, holder=holder)
    if not result.loaded:
        _rebuild_if_lost()
        raise StockNotLoaded()
    if result.refused_by is not None:
        counter = result.refused_by
        raise RateLimited(
            details={"scope": counter.scope, "limit": counter.limit, "windowSeconds": counter.window_ms / 1000},
            retry_after=max(1, math.ceil(result.retry_after_ms / 1000)),
        )
    if result.limit is not None:
        raise PurchaseLimitReached(
            details={
                "productId": result.failed_product_id,
                "limit": result.limit,
                "alreadyHeld": result.held,
                "requested": quantities[result.failed_product_id],
            }
        )
    raise OutOfStock(
        details={
            "productId": result.failed_product_id,
            "requested": quantities[result.failed_product_id],
            "available": max(result.available or 0, 0),
        }
    )


def stock_release(*, token: uuid.UUID) -> bool:
    """Give back a reservation whose order failed, unless its sale committed after all.

    An error can reach the caller after the COMMIT went through (a lost connection on COMMIT,
    a worker stopped right after it), so the database decides, as for reconciliation: the
    RELEASED row goes in first, and only a reservation that is RELEASED is given back (the Lua
    script releases a token at most once). If the database cannot be reached, the reservation
    stays tracked and reconciliation settles it after the grace period.
    """
    return _settle_as_released(str(token)) and stock.release(token=token)


def _settle_as_released(token: str) -> bool:
    """Mark the reservation RELEASED unless it was SOLD; True if it is RELEASED now."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO inventory_stockreservation (token, state, created_at) VALUES (%s, %s, now()) "
            "ON CONFLICT (token) DO NOTHING",
            [token, StockReservation.State.RELEASED],
        )
        cursor.execute("SELECT state FROM inventory_stockreservation WHERE token = %s", [token])
        return cursor.fetchone()[0] == StockReservation.State.RELEASED


# --- Recording a sale: the reservation settled SOLD and its ledger rows, fenced by the epoch --
# (the statements and fragments in inventory/queries.py; an order's own statement composes them)

_EPOCH_SQL = "SELECT last_value FROM inventory_stock_epoch"
_EPOCH_BUMP_SQL = "SELECT nextval('inventory_stock_epoch')"


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
        StockEpoch(epoch=reservation.epoch),
        StockSale.of(reservation=reservation, quantities=quantities, kind=kind, reason=reason),
        LedgerReference(reference=reference),
    )
    try:
        (recorded,) = sql_one(RECORD_UNITS.text, params)
    except IntegrityError as exc:
        raise ReservationLost() from exc
    if not recorded:
        raise ReservationLost()


def stock_epoch() -> int:
    (epoch,) = sql_one(_EPOCH_SQL, [])
    return epoch


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
        move = {str(token): stock.Units(items=dict(quantities), holder=holder)}
        transaction.on_commit(lambda: stock.apply_moves(moves=move), robust=True)


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
            stock_release(token=reservation.token)
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
            stock.set_purchase_limit(product_id=product.pk, limit=limit)
            if limit:
                inventory_reconcile()

        transaction.on_commit(load, robust=True)


def product_create(*, name: str, price: int, stock_quantity: int = 0, active: bool = True) -> Product:
    """A product and its initial stock (a restock, applied once: _stock_move_in)."""
    with transaction.atomic():
        product = Product.objects.create(name=name, price=price, active=active)
        if stock_quantity:
            _stock_move_in(quantities={product.id: stock_quantity}, kind=StockMovement.Kind.RESTOCK,
                           reason="initial stock")  # fmt: skip
        else:  # its count exists, at 0 (adding 0 twice is harmless)
            transaction.on_commit(lambda: stock.add_available(product_id=product.id, quantity=0), robust=True)
    return product


# --- Reconciliation ---------------------------------------------------------------------


@dataclass
class ProductDrift:
    product_id: int
    on_hand: int
    in_flight: int
    redis: int | None
    unapplied: int = 0  # units of committed moves (returns, restocks) Redis had not applied yet
    unrecorded: int = 0  # units of moves Redis had applied that committed after the database snapshot

    @property
    def expected(self) -> int:
        """What Redis should say at its snapshot."""
        return self.on_hand - self.in_flight - self.unapplied + self.unrecorded

    @property
    def drift(self) -> int:
        return self.expected - (self.redis or 0)


@dataclass
class ReconcileReport:
    rebuilt: bool = False
    released_tokens: list[str] = field(default_factory=list)
    forgotten_tokens: int = 0
    products: list[ProductDrift] = field(default_factory=list)
    holding_drifts: dict[tuple[int, int], int] = field(default_factory=dict)  # purchase limits
    pending_moves: int = 0  # moves between the snapshots: committed or applied, not yet both
    repaired: bool = False

    @property
    def drifted(self) -> list[ProductDrift]:
        # A count missing from Redis is drift, unless a move not yet applied will create it.
        return [p for p in self.products if p.drift != 0 or (p.redis is None and not p.unapplied)]


def purchase_limits() -> dict[int, int | None]:
    return dict(Product.objects.values_list("id", "purchase_limit"))


def holdings_by_holder(*, product_ids: list[int]) -> dict[tuple[int, int], int]:
    """Units each holder holds for good (sold, less returned) of the given products, from the
    ledger: (product id, holder) -> units."""
    rows = (
        StockMovement.objects.filter(product_id__in=product_ids, holder__isnull=False)
        .values("product_id", "holder")
        .annotate(units=Sum("quantity"))
        .values_list("product_id", "holder", "units")
    )
    return {(pid, holder): -units for pid, holder, units in rows if units}


def pending_moves() -> dict[str, stock.Units]:
    """Moves that put units in (returns, restocks), committed and not yet acknowledged as applied
    in Redis: token -> their units and holder."""
    # move_token IS NOT NULL said outright, so that the planner may use the partial index.
    rows = StockMovement.objects.filter(
        move_token__isnull=False, move_token__in=PendingMove.objects.values("token")
    ).values_list("move_token", "product_id", "quantity", "holder")
    moves: dict[str, stock.Units] = {}
    for token, pid, quantity, holder in rows:
        move = moves.setdefault(str(token), stock.Units(items={}, holder=holder))
        move.items[pid] = move.items.get(pid, 0) + quantity
    return moves


def _recorded_moves(tokens: list[str]) -> set[str]:
    """The moves among `tokens` whose ledger rows this transaction sees (the partial index on
    move_token)."""
    recorded: set[str] = set()
    for chunk in _chunks(tokens):
        found = StockMovement.objects.filter(move_token__in=chunk).values_list("move_token", flat=True).distinct()
        recorded.update(str(token) for token in found)
    return recorded


def _acknowledge_moves(tokens: list[str]) -> None:
    """The moves a snapshot showed both committed and applied are no longer pending (each chunk
    committed on its own: deleting again is harmless)."""
    for chunk in _chunks(tokens):
        PendingMove.objects.filter(token__in=chunk).delete()


def _count_units(
    units: Iterable[stock.Units], *, holdings: dict[tuple[int, int], int], holding_sign: int, limited: Container[int]
) -> dict[int, int]:
    """The units of `units` by product; each also added (times `holding_sign`) to its holder's
    entry in `holdings`, for the products in `limited`."""
    by_product: dict[int, int] = {}
    for each in units:
        for pid, quantity in each.items.items():
            by_product[pid] = by_product.get(pid, 0) + quantity
            if each.holder is not None and pid in limited:
                holdings[pid, each.holder] = holdings.get((pid, each.holder), 0) + holding_sign * quantity
    return by_product


def _chunks(tokens: list[str], size: int = 5_000) -> Iterator[list[str]]:
    for start in range(0, len(tokens), size):
        yield tokens[start : start + size]


def on_hand_by_product() -> dict[int, int]:
    totals = dict(
        Product.objects.values_list("id").annotate(total=Sum("movements__quantity")).values_list("id", "total")
    )
    return {pid: totals[pid] or 0 for pid in sorted(totals)}


def _settle_abandoned(*, grace_seconds: float) -> list[str]:
    """Release reservations older than the grace period whose order never committed.

    Inserting the RELEASED row first means a late order transaction can no longer commit (its
    SOLD insert conflicts); a crash after the insert just repeats the idempotent release.
    """
    cutoff_ms = int((time.time() - grace_seconds) * 1000)
    tokens = stock.tokens_reserved_before(cutoff_ms=cutoff_ms)
    if not tokens:
        return []
    # Most old reservations were sold long ago: find those in one query and leave them to the
    # drift pass, which forgets them; only the rest need settling one by one.
    sold = _sold_tokens(tokens)
    released = []
    for token in (t for t in tokens if t not in sold):
        if _settle_as_released(token) and stock.release(token=token):
            released.append(token)
    if released:
        logger.warning("released %d abandoned stock reservations", len(released))
    return released


def _sold_tokens(tokens: list[str]) -> set[str]:
    sold: set[str] = set()
    for chunk in _chunks(tokens):
        found = StockReservation.objects.filter(token__in=chunk, state=StockReservation.State.SOLD).values_list(
            "token", flat=True
        )
        sold.update(str(token) for token in found)
    return sold


def _wait_for_older_transactions(*, timeout: float) -> None:
    """After Redis lost its data, sales reserved before the loss may still be committing:
    wait until every transaction that began before then has ended (they are time-bounded by
    statement and idle-in-transaction timeouts)."""
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")  # the database's clock, not this host's
        started_before = cursor.fetchone()[0]
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid() AND xact_start < %s",
                [started_before],
            )
            if cursor.fetchone()[0] == 0:
                return
            time.sleep(0.05)
    raise StockNotLoaded("Transactions older than the Redis data loss are still running.")


def inventory_reconcile(
    *, repair: bool = True, grace_seconds: float | None = None, rebuild_wait_seconds: float = 60.0
) -> ReconcileReport:
    """Compare Redis with the ledger, give back abandoned reservations, repair drift.

    Exact under live traffic: the database snapshot (REPEATABLE READ) is taken before the Redis
    snapshot, a reservation tracked in Redis counts as in flight unless that same database
    snapshot shows it SOLD, a move that puts units in (a return, a restock) counts as pending
    while only one side shows it (committed and not yet applied, or applied and committed after
    the database snapshot), and the repair shifts counts by the drift rather than setting them,
    then applies the committed moves Redis had not (each at most once: move.lua).
    With `repair=False` it only reports. Only one reconciler runs at a time (advisory lock).
    """
    grace = settings.STOCK_RESERVATION_GRACE_SECONDS if grace_seconds is None else grace_seconds
    report = ReconcileReport()
    with _reconciliation_lock() as locked:
        if not locked:
            logger.info("another reconciliation is running; skipped")
            return report
        return _reconcile(report, repair=repair, grace=grace, rebuild_wait_seconds=rebuild_wait_seconds)


@contextlib.contextmanager
def _reconciliation_lock() -> Iterator[bool]:
    """The session advisory lock that keeps reconciliations (and forgetting) from overlapping;
    yields whether it was taken."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [AdvisoryLock.STOCK_RECONCILIATION])
        locked = cursor.fetchone()[0]
    try:
        yield locked
    finally:
        if locked:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [AdvisoryLock.STOCK_RECONCILIATION])


def _reconcile(report: ReconcileReport, *, repair: bool, grace: float, rebuild_wait_seconds: float) -> ReconcileReport:
    run_id = stock.server_run_id()
    epoch = stock_epoch()
    if not stock.is_loaded(run_id=run_id):
        report.rebuilt = True
        if repair:  # a check changes nothing: it need not wait for transactions older than the loss
            # First the fence: reservations made before the loss can no longer be recorded...
            (epoch,) = sql_one(_EPOCH_BUMP_SQL, [])
            # ...then the wait for the sales that read the old epoch, so the rebuild counts them.
            _wait_for_older_transactions(timeout=rebuild_wait_seconds)
    elif repair:
        report.released_tokens = _settle_abandoned(grace_seconds=grace)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        on_hand = on_hand_by_product()
        limits = purchase_limits()
        limited = sorted(pid for pid, limit in limits.items() if limit)
        held_for_good = holdings_by_holder(product_ids=limited)
        pending = pending_moves()
        snap = stock.snapshot(product_ids=list(on_hand), limited_ids=limited)
        sold = _sold_tokens(list(snap.reservations))
        recorded = _recorded_moves(list(snap.moves))
    # Reservations in flight are in Redis' counts and holdings, not in the ledger.
    expected_held = dict(held_for_good)
    in_flight = _count_units(
        (tracked for token, tracked in snap.reservations.items() if token not in sold),
        holdings=expected_held, holding_sign=1, limited=snap.holdings,
    )  # fmt: skip
    # Moves between the two snapshots: committed but not applied in Redis yet (the repair applies
    # them, unless their own step gets there first), or applied but committed after the database
    # snapshot. Either way they are pending, not drift: Redis is expected without the first and
    # with the second.
    unapplied = {token: move for token, move in pending.items() if token not in snap.moves}
    unrecorded = {token: move for token, move in snap.moves.items() if token not in recorded}
    not_applied = _count_units(unapplied.values(), holdings=expected_held, holding_sign=1, limited=snap.holdings)
    not_recorded = _count_units(unrecorded.values(), holdings=expected_held, holding_sign=-1, limited=snap.holdings)
    report.holding_drifts = _holding_drifts(expected_held, snap.holdings)
    report.products = [
        ProductDrift(product_id=pid, on_hand=units, in_flight=in_flight.get(pid, 0), redis=snap.available[pid],
                     unapplied=not_applied.get(pid, 0), unrecorded=not_recorded.get(pid, 0))
        for pid, units in on_hand.items()
    ]  # fmt: skip
    report.forgotten_tokens = len(sold)
    report.pending_moves = len(unapplied) + len(unrecorded)
    if repair:
        # Acknowledged (committed) before Redis forgets the markers: a crash in between leaves a
        # marker whose move the next snapshot shows recorded, and it is forgotten then.
        _acknowledge_moves(sorted(recorded))
        report.repaired = stock.repair(
            drifts={p.product_id: p.drift for p in report.products}, forget_tokens=sorted(sold), run_id=run_id,
            epoch=epoch, limits=limits, holding_drifts=report.holding_drifts, apply=unapplied,
            forget_moves=sorted(recorded),
        )  # fmt: skip
    drifted = [] if report.rebuilt else report.drifted
    metrics.STOCK_DRIFT_FOUND.inc(len(drifted))
    if report.repaired:
        metrics.STOCK_DRIFT_REPAIRED.inc(len(drifted))
    for product in drifted:
        logger.warning(
            "stock drift on product %s: redis %s, expected %s (on hand %s, in flight %s, moves not yet applied %s,"
            " applied but not yet in the snapshot %s)%s",
            product.product_id,
            product.redis,
            product.expected,
            product.on_hand,
            product.in_flight,
            product.unapplied,
            product.unrecorded,
            " - repaired" if repair else "",
        )
    if report.holding_drifts and not report.rebuilt:
        logger.warning("purchase-limit holdings drifted for %d holders%s", len(report.holding_drifts),
                       " - repaired" if repair else "")  # fmt: skip
    return report


def _holding_drifts(
    expected: dict[tuple[int, int], int], redis: dict[int, dict[int, int]]
) -> dict[tuple[int, int], int]:
    """(product id, holder) -> units to add to Redis' holdings to make them the expected ones."""
    drifts = {}
    for pid, holders in redis.items():
        for holder, units in holders.items():
            if expected.get((pid, holder), 0) != units:
                drifts[pid, holder] = expected.get((pid, holder), 0) - units
    for (pid, holder), units in expected.items():
        if holder not in redis.get(pid, {}) and units:
            drifts[pid, holder] = units
    return drifts


def inventory_forget_sold(*, older_than_seconds: float = 1.0, chunk: int = 2_000) -> int:
    """Stop tracking, in Redis, the reservations whose sale has committed. Returns how many.

    Reconciliation forgets them too, but only once a minute: under a flash sale tens of
    thousands pile up meanwhile, and its snapshot and repair scripts, which must see them all
    at once, then held Redis (and every order's reservation) for 100-170 ms each (measured in
    Redis' SLOWLOG at 600 orders/s). Run every few seconds, in chunks, this keeps the tracked
    set to the last seconds' orders. Safe because it holds the reconciliation's lock: a
    reservation forgotten between a reconciliation's database snapshot and its Redis snapshot
    (its sale committed in between) would count as units nobody holds. Reservations not SOLD
    (in flight, or abandoned) are left for reconciliation.
    """
    cutoff_ms = int((time.time() - older_than_seconds) * 1000)
    forgotten = kept = 0
    with _reconciliation_lock() as locked:
        if not locked:
            return 0
        while tokens := stock.tokens_reserved_before(cutoff_ms=cutoff_ms, offset=kept, limit=chunk):
            sold = _sold_tokens(tokens)
            if sold:
                forgotten += stock.forget(tokens=sorted(sold))
            kept += len(tokens) - len(sold)
            if len(tokens) < chunk:
                break
    return forgotten


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
    oldest_ms = stock.oldest_tracked_ms()
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
