"""Reconciliation: Redis' live counts compared with the ledger, abandoned reservations given
back, drift repaired, and sold reservations forgotten (inventory_reconcile, inventory_forget_sold);
the price mirror written again from the database (prices_mirror_load).

Exact under live traffic for the reasons inventory_reconcile gives; one reconciler at a time
(AdvisoryLock.STOCK_RECONCILIATION). Moved out of inventory/services.py, which calls it when
Redis lost its data (a rebuild) and when a purchase limit is set.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Sum

from inventory import redis_counts
from inventory.errors import (
    StockNotLoaded,
)
from inventory.models import PendingMove, Product, StockMovement, StockReservation
from inventory.queries import PRODUCTS_FOR_MIRROR_BY_ID_SQL, PRODUCTS_FOR_MIRROR_SQL
from inventory.reservations import (
    reservation_mark_released,
    stock_epoch,
    stock_epoch_bump,
    stock_epochs_fence_other_layouts,
)
from inventory.shards import StockShard, by_shard, shard_of, stock_shards
from kernel import metrics
from kernel.database import AdvisoryLock

logger = logging.getLogger(__name__)


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
    rebuilt: bool = False  # some shard was rebuilt from the database...
    rebuilt_shards: list[str] = field(default_factory=list)  # ...these (their tags)
    released_tokens: list[str] = field(default_factory=list)
    forgotten_tokens: int = 0
    products: list[ProductDrift] = field(default_factory=list)
    holding_drifts: dict[tuple[int, int], int] = field(default_factory=dict)  # purchase limits
    pending_moves: int = 0  # moves between the snapshots: committed or applied, not yet both
    repaired: bool = False
    prices_mirrored: int = 0  # products whose price mirror (inv:price:<id>) the repair wrote

    @property
    def drifted(self) -> list[ProductDrift]:
        # A count missing from Redis is drift, unless a move not yet applied will create it.
        return [p for p in self.products if p.drift != 0 or (p.redis is None and not p.unapplied)]


def prices_mirror_load(*, product_ids: Sequence[int] | None = None) -> int:
    """Write the price mirror (inv:price:<id>: the price, or "off") of the given products, or of
    every product, from the database, in one round trip to Redis; returns how many it wrote. A
    product asked for by id and not found loses its key.

    Safe because the read holds FOR SHARE on the rows until the mirror is written: a change of
    price or on-sale (inventory.services.product_update: the row locked FOR NO KEY UPDATE, the key
    deleted, the row updated) either committed before the read, and the value read is its own,
    or waits for this transaction to end and deletes the key after this write. In a transaction
    of its own at READ COMMITTED, so that a read that waited for a change reads the row as the
    change committed it (under REPEATABLE READ it would fail instead). A crash before the write
    leaves the keys as they were (absent, or the committed value); one during it, some written.
    """
    with transaction.atomic(), connection.cursor() as cursor:
        if product_ids is None:
            cursor.execute(PRODUCTS_FOR_MIRROR_SQL)
        else:
            cursor.execute(PRODUCTS_FOR_MIRROR_BY_ID_SQL, {"ids": list(product_ids)})
        values = {pid: redis_counts.price_mirror_value(price=price, active=active)
                  for pid, price, active in cursor.fetchall()}  # fmt: skip
        gone = sorted(set(product_ids or ()) - set(values))
        redis_counts.prices_write(values=values, gone=gone)  # before the commit: the rows still locked
    return len(values)


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


def pending_moves() -> dict[str, redis_counts.Units]:
    """Moves that put units in (returns, restocks), committed and not yet acknowledged as applied
    in Redis: token -> their units and holder."""
    # move_token IS NOT NULL said outright, so that the planner may use the partial index.
    rows = StockMovement.objects.filter(
        move_token__isnull=False, move_token__in=PendingMove.objects.values("token")
    ).values_list("move_token", "product_id", "quantity", "holder")
    moves: dict[str, redis_counts.Units] = {}
    for token, pid, quantity, holder in rows:
        move = moves.setdefault(str(token), redis_counts.Units(items={}, holder=holder))
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
    units: Iterable[redis_counts.Units],
    *,
    holdings: dict[tuple[int, int], int],
    holding_sign: int,
    limited: Container[int],
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


def _settle_abandoned(shard: StockShard, *, grace_seconds: float) -> list[str]:
    """Release the shard's reservations older than the grace period whose order never committed.
    Those of accepted orders (orders' intake) are not abandoned: a settler will record their sale.

    Inserting the RELEASED row first means a late order transaction can no longer commit (its
    SOLD insert conflicts); a crash after the insert just repeats the idempotent release. The
    row decides for a reservation's parts on every shard: each shard's turn releases its own.
    """
    cutoff_ms = int((time.time() - grace_seconds) * 1000)
    tokens = redis_counts.tokens_reserved_before(shard, cutoff_ms=cutoff_ms)
    if not tokens:
        return []
    # Most old reservations were sold long ago: find those in one query and leave them to the
    # drift pass, which forgets them; only the rest need settling one by one.
    sold = _sold_tokens(tokens)
    unsettled = [t for t in tokens if t not in sold]
    held = redis_counts.held_by_accepted_orders(shard=shard, tokens=unsettled) if unsettled else set()
    released = []
    for token in (t for t in unsettled if t not in held):
        if reservation_mark_released(token) and redis_counts.release(token=token, shards=[shard]):
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


@dataclass
class _ShardState:
    """One shard's side of a reconciliation: its server's run id, its epoch, its snapshot."""

    shard: StockShard
    run_id: str
    epoch: int
    loaded: bool
    product_ids: list[int] = field(default_factory=list)
    snapshot: redis_counts.Snapshot | None = None


def _reconcile(report: ReconcileReport, *, repair: bool, grace: float, rebuild_wait_seconds: float) -> ReconcileReport:
    if repair:
        stock_epochs_fence_other_layouts(stock_shards())
    states = []
    for shard in stock_shards():
        run_id, epoch = redis_counts.server_run_id(shard), stock_epoch(shard)
        # Loaded by this server run, and under the database's epoch: the keys of a layout that
        # served before another (STOCK_SHARDS or STOCK_REDIS_CLUSTER changed, then changed back)
        # still look loaded, but their epoch was bumped while the other one sold.
        states.append(_ShardState(shard=shard, run_id=run_id, epoch=epoch,
                                  loaded=redis_counts.is_loaded(shard, run_id=run_id, epoch=epoch)))  # fmt: skip
    lost = [state for state in states if not state.loaded]
    report.rebuilt_shards = [state.shard.tag for state in lost]
    report.rebuilt = bool(lost)
    if repair:  # a check changes nothing: it need not wait for transactions older than the loss
        for state in lost:
            # First the fence: reservations made on the shard before the loss can no longer be
            # recorded...
            state.epoch = stock_epoch_bump(state.shard)
        if lost:  # ...then the wait for the sales that read the old epoch, so the rebuild counts them.
            _wait_for_older_transactions(timeout=rebuild_wait_seconds)
        for state in states:
            if state.loaded:
                report.released_tokens += _settle_abandoned(state.shard, grace_seconds=grace)
        # Before the counts: a rebuilt shard is marked loaded with its prices there.
        report.prices_mirrored = prices_mirror_load()
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        on_hand = on_hand_by_product()
        limits = purchase_limits()
        limited = sorted(pid for pid, limit in limits.items() if limit)
        held_for_good = holdings_by_holder(product_ids=limited)
        pending = pending_moves()
        # Each shard's Redis snapshot after the one database snapshot (see inventory_reconcile).
        products_of = by_shard(on_hand)
        for state in states:
            state.product_ids = products_of.get(state.shard, [])
            state.snapshot = redis_counts.snapshot(
                state.shard, product_ids=state.product_ids,
                limited_ids=[pid for pid in limited if shard_of(pid) == state.shard],
            )  # fmt: skip
        sold = _sold_tokens(sorted({token for state in states for token in state.snapshot.reservations}))
        recorded = _recorded_moves(sorted({token for state in states for token in state.snapshot.moves}))
    pending_parts = redis_counts.moves_by_shard(pending)
    acknowledged = _fully_applied(recorded, pending_parts=pending_parts, states=states)
    repairs = []
    for state in states:
        snap = state.snapshot
        # Reservations in flight are in Redis' counts and holdings, not in the ledger.
        expected_held = {key: units for key, units in held_for_good.items() if key[0] in snap.holdings}
        in_flight = _count_units(
            (tracked for token, tracked in snap.reservations.items() if token not in sold),
            holdings=expected_held, holding_sign=1, limited=snap.holdings,
        )  # fmt: skip
        # Moves between the two snapshots: committed but not applied in Redis yet (the repair
        # applies them, unless their own step gets there first), or applied but committed after
        # the database snapshot. Either way they are pending, not drift: Redis is expected
        # without the first and with the second.
        shard_pending = pending_parts.get(state.shard, {})
        unapplied = {token: move for token, move in shard_pending.items() if token not in snap.moves}
        unrecorded = {token: move for token, move in snap.moves.items() if token not in recorded}
        not_applied = _count_units(unapplied.values(), holdings=expected_held, holding_sign=1, limited=snap.holdings)
        not_recorded = _count_units(unrecorded.values(), holdings=expected_held, holding_sign=-1,
                                    limited=snap.holdings)  # fmt: skip
        holding_drifts = _holding_drifts(expected_held, snap.holdings)
        report.holding_drifts.update(holding_drifts)
        products = [
            ProductDrift(product_id=pid, on_hand=on_hand[pid], in_flight=in_flight.get(pid, 0),
                         redis=snap.available[pid], unapplied=not_applied.get(pid, 0),
                         unrecorded=not_recorded.get(pid, 0))
            for pid in state.product_ids
        ]  # fmt: skip
        report.products += products
        report.pending_moves += len(unapplied) + len(unrecorded)
        repairs.append((state, products, holding_drifts, unapplied))
    report.forgotten_tokens = len(sold)
    if repair:
        # Acknowledged (committed) before Redis forgets the markers: a crash in between leaves a
        # marker whose move the next snapshot shows recorded, and it is forgotten then.
        _acknowledge_moves(sorted(acknowledged))
        outcomes = []
        for state, products, holding_drifts, unapplied in repairs:
            own = set(state.product_ids)
            outcomes.append(redis_counts.repair(
                state.shard, drifts={p.product_id: p.drift for p in products},
                forget_tokens=sorted(token for token in state.snapshot.reservations if token in sold),
                run_id=state.run_id, epoch=state.epoch, limits={pid: limits[pid] for pid in own},
                holding_drifts=holding_drifts, apply=unapplied,
                forget_moves=sorted(token for token in state.snapshot.moves if token in acknowledged),
            ))  # fmt: skip
        report.repaired = all(outcomes)
    rebuilt = set(report.rebuilt_shards)
    drifted = [p for p in report.drifted if shard_of(p.product_id).tag not in rebuilt]
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


def _fully_applied(
    recorded: set[str], *, pending_parts: dict[StockShard, dict[str, redis_counts.Units]], states: list[_ShardState]
) -> set[str]:
    """The recorded moves no longer pending: applied on every shard they put units on (a move of
    several shards acknowledged after one part would leave the others to a late copy of its
    step, which would find no marker and apply them twice)."""
    applied_on: dict[str, set[StockShard]] = {}
    for state in states:
        for token in state.snapshot.moves:
            applied_on.setdefault(token, set()).add(state.shard)
    needed: dict[str, set[StockShard]] = {}
    for shard, moves in pending_parts.items():
        for token in moves:
            needed.setdefault(token, set()).add(shard)
    return {token for token in recorded if needed.get(token, set()) <= applied_on.get(token, set())}


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
    forgotten = 0
    with _reconciliation_lock() as locked:
        if not locked:
            return 0
        for shard in stock_shards():
            kept = 0
            while tokens := redis_counts.tokens_reserved_before(shard, cutoff_ms=cutoff_ms, offset=kept, limit=chunk):
                sold = _sold_tokens(tokens)
                if sold:
                    forgotten += redis_counts.forget(shard, tokens=sorted(sold))
                kept += len(tokens) - len(sold)
                if len(tokens) < chunk:
                    break
    return forgotten
