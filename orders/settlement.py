"""Settlement of asynchronous orders in batches: many PENDING_PAYMENT orders paid per transaction.

The order the request committed is the work item: no message is sent per order. The request's
INSERT also NOTIFYs `SETTLE_CHANNEL` (delivered at its commit), which wakes an idle settler at
once; a busy settler never waits, it takes the next batch. Several settlers share the work:
each batch claims its orders with FOR UPDATE SKIP LOCKED, so no two settlers (nor a cancel, nor
the expiry job, which lock the order row too) take the same order. One transaction per batch:
the claim, the balances (accounts' version column), the payments, the status moves and their
events commit together or not at all, so a settler killed mid-batch leaves its orders pending
for the next one, and none is charged twice (payments' unique order id besides).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field

import orjson
import psycopg
import redis
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction

from accounts.services import WithdrawalOutcome
from inventory.models import StockMovement, StockReservation
from inventory.queries import StockEpoch, StockSales
from kernel import metrics
from kernel.database import sql_all, sql_one
from orders import events, intake, queries
from orders.models import Order, OrderStatus, PlacedItem
from orders.queries import INTAKE_INSERT, SETTLE_CLAIM, SETTLE_MARK_PAID
from orders.status import order_give_back, order_move
from payments.references import order_reference
from payments.services import Charge, payment_take_many

logger = logging.getLogger(__name__)

# The database went away (PostgreSQL restarting, a lost connection, a deadlock between two
# batches): the batch is rolled back and tried again whole once it is back. Any other error
# belongs to the orders of the batch (see BatchFailed).
TRANSIENT_ERRORS = (OperationalError, InterfaceError, psycopg.OperationalError, psycopg.InterfaceError)


class BatchFailed(Exception):
    """A batch failed for a reason that is not the database going away (a bug, or an order's
    data that breaks a rule): rolled back, nothing of it written. Names the orders it claimed,
    so that the settler can find the one at fault by settling them one at a time."""

    def __init__(self, order_ids: list[int]):
        self.order_ids = order_ids
        super().__init__(f"settlement of orders {id_ranges(order_ids)} failed")


@dataclass
class SettledBatch:
    paid: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    retried: list[int] = field(default_factory=list)  # balance kept changing: left pending
    set_aside: list[int] = field(default_factory=list)  # failed alone too often: cancelled (order_set_aside)

    @property
    def claimed(self) -> int:
        return len(self.paid) + len(self.cancelled) + len(self.retried) + len(self.set_aside)

    def add(self, other: SettledBatch) -> None:
        self.paid += other.paid
        self.cancelled += other.cancelled
        self.retried += other.retried
        self.set_aside += other.set_aside


# Not paid, for good: the balance did not cover it, or its user has no account.
_FAILED_OUTCOMES = (WithdrawalOutcome.SHORT, WithdrawalOutcome.NO_ACCOUNT)


def orders_settle_batch(
    *, limit: int | None = None, only: list[int] | None = None, skip: frozenset[int] = frozenset()
) -> SettledBatch:
    """Pay up to `limit` pending orders, oldest first, in one transaction (`only` these, if
    given; never those in `skip`).

    Each order is charged its total less its discount. An order whose balance is short, or
    whose user has no account, fails alone: PAYMENT_FAILED then CANCELLED, its stock and coupon
    use given back; the rest of the batch is paid. One user's orders are paid in order, each
    against what the previous left. An account whose version kept moving beyond the retry bound
    leaves its orders pending (the next batch takes them again), never failed for that reason.
    Raises TRANSIENT_ERRORS as they come, and BatchFailed for any other error once the claimed
    orders are rolled back.
    """
    batch = SettledBatch()
    started = time.monotonic()
    with transaction.atomic():
        orders = _claim(limit or settings.SETTLE_BATCH_SIZE, only=only, skip=skip)
        if not orders:
            return batch
        try:
            paid = _settle(orders, batch)
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:
            raise BatchFailed([o.id for o in orders]) from exc
    _observe(batch, waited_at_claim=[o.waited_at_claim for o in paid], started=started)
    return batch


def _settle(orders: list[Order], batch: SettledBatch) -> list[Order]:
    """The claimed orders paid or failed, inside the batch's transaction; returns those paid."""
    PlacedItem.attach(orders)
    if settings.PAYMENT_GATEWAY_LATENCY_MS:
        time.sleep(settings.PAYMENT_GATEWAY_LATENCY_MS / 1000)  # a payment provider's round trip, per batch
    outcomes = payment_take_many(charges=[Charge(o.id, o.user_id, o.total_amount - o.discount_amount) for o in orders])
    paid = [o for o, outcome in zip(orders, outcomes, strict=True) if outcome == WithdrawalOutcome.TAKEN]
    failed = [o for o, outcome in zip(orders, outcomes, strict=True) if outcome in _FAILED_OUTCOMES]
    batch.retried = [o.id for o, outcome in zip(orders, outcomes, strict=True) if outcome == WithdrawalOutcome.CONFLICT]
    if paid:
        _mark_paid(paid)
        batch.paid = [o.id for o in paid]
    for order in failed:
        _fail_and_cancel(order)
        batch.cancelled.append(order.id)
    return paid


# --- The intake's batches: orders Redis accepted, written here for the first time -------------


class IntakeNotReady(Exception):
    """The batch cannot be written yet: stock is not loaded in Redis (a rebuild is due), or the
    stock epoch moved on since the batch was claimed. Its entries stay unacknowledged and the
    settler takes them again shortly."""


def intake_settle_batch(entries: list[intake.IntakeEntry]) -> SettledBatch:
    """Write the accepted orders of `entries` and pay them, in one transaction; then acknowledge
    them in the stream.

    Each order is inserted PENDING_PAYMENT with its items, its created event and its sale (fenced
    by the stock epoch), unless its id is written already (the entry delivered again: after a
    settler died between its commit and its acknowledgement, or claimed from a slow one, whose
    insert this one waits for and then skips). Then it is paid as a pending order is (_settle):
    PAID, or PAYMENT_FAILED then CANCELLED with its stock given back; one its buyer cancelled
    before the drain is cancelled, stock given back. An order whose balance kept changing stays
    PENDING_PAYMENT in the database, where the settlers' claim finds it. Entries whose record is
    gone (Redis lost its data) are acknowledged; intake.intake_seen counts them. Raises IntakeNotReady,
    TRANSIENT_ERRORS, and BatchFailed for any other error once nothing was written."""
    batch = SettledBatch()
    started = time.monotonic()
    claimed = intake.entries_claim([entry.order_id for entry in entries])
    if claimed.epoch is None:
        raise IntakeNotReady("stock is not loaded")
    accepted = {oid: order for oid, order in claimed.orders.items() if order is not None}
    lost = [entry for entry in entries if claimed.orders.get(entry.order_id) is None]
    paid: list[Order] = []
    if accepted:
        with transaction.atomic():
            written = _intake_insert(list(accepted.values()), epoch=claimed.epoch)
            try:
                orders = [_as_pending_order(accepted[oid]) for oid in sorted(written)]
                paid = _settle([o for o in orders if not accepted[o.id].cancelled], batch)
                for order in (o for o in orders if accepted[o.id].cancelled):
                    order_give_back(order, to_status=OrderStatus.CANCELLED, event_type=events.CANCELLED)
                    batch.cancelled.append(order.id)
            except TRANSIENT_ERRORS:
                raise
            except Exception as exc:
                raise BatchFailed(sorted(written)) from exc
    if settings.SETTLE_PAUSE_BEFORE_ACK_SECONDS:
        time.sleep(settings.SETTLE_PAUSE_BEFORE_ACK_SECONDS)  # a crash drill's window: committed, not acknowledged
    intake.entries_drained([(entry, accepted[entry.order_id].user_id) for entry in entries
                            if entry.order_id in accepted])  # fmt: skip
    if lost:  # counted with their generation (intake.intake_seen)
        intake.entries_forget(lost)
        logger.error("accepted orders %s are gone from Redis: not written, not charged",
                     id_ranges([entry.order_id for entry in lost]))  # fmt: skip
    _intake_seen_now_and_then()
    _observe(batch, waited_at_claim=[time.time() - accepted[o.id].created_ms / 1000 for o in paid], started=started)
    return batch


_intake_seen_at = 0.0


def _intake_seen_now_and_then() -> None:
    """intake.intake_seen after a batch, at most once a second: two statements, not per batch."""
    global _intake_seen_at
    if time.monotonic() - _intake_seen_at >= 1.0:
        intake.intake_seen()
        _intake_seen_at = time.monotonic()


def _intake_insert(orders: list[intake.AcceptedOrder], *, epoch: int) -> set[int]:
    """The orders written now (not before); raises IntakeNotReady if the epoch moved on."""
    rows, items, sales, new_events = [], [], [], []
    for accepted in orders:
        rows.append({"id": accepted.order_id, "user_id": accepted.user_id, "total": accepted.total,
                     "token": str(accepted.token), "created_at": accepted.created_at.isoformat()})  # fmt: skip
        reference = order_reference(accepted.order_id)
        for product_id, quantity, unit_price in accepted.items:
            items.append({"order_id": accepted.order_id, "product_id": product_id, "quantity": quantity,
                          "unit_price": unit_price})  # fmt: skip
            sales.append({"token": str(accepted.token), "product_id": product_id, "quantity": quantity,
                          "holder": accepted.user_id, "reference": reference})  # fmt: skip
        new_events.append(events.event_build(_as_pending_order(accepted), events.CREATED))
    params = INTAKE_INSERT.bind(
        queries.AcceptedBatch(pending=OrderStatus.PENDING_PAYMENT, orders=orjson.dumps(rows).decode(),
                              items=orjson.dumps(items).decode()),
        queries.NewEvents(events=events.as_json(new_events)),
        StockEpoch.of({intake.intake_shard().tag: epoch}),
        StockSales(sold=StockReservation.State.SOLD, kind=StockMovement.Kind.SALE, sales=orjson.dumps(sales).decode()),
    )  # fmt: skip
    fence_holds, written = sql_one(INTAKE_INSERT.text, params)
    if not fence_holds:
        raise IntakeNotReady("the stock epoch moved on since the batch was claimed")
    written = set(written or ())
    skipped = {o.order_id: o.token for o in orders if o.order_id not in written}
    if skipped and _written_before(skipped) != set(skipped):  # never drop an order on another's id
        raise RuntimeError(f"order ids {id_ranges(sorted(skipped))} are taken by other orders")
    return written


def _written_before(skipped: dict[int, uuid.UUID]) -> set[int]:
    """The orders among `skipped` (id -> reservation token) that are in the database as these very
    orders (an entry delivered again), not another order that has the id."""
    rows = Order.objects.filter(pk__in=list(skipped)).values_list("id", "reservation_token")
    return {order_id for order_id, token in rows if skipped[order_id] == token}


def _as_pending_order(accepted: intake.AcceptedOrder) -> Order:
    return accepted.as_order(status=OrderStatus.PENDING_PAYMENT)


def _fail_and_cancel(order: Order) -> None:
    """PAYMENT_FAILED then CANCELLED, the stock and the coupon use given back, in the caller's
    transaction, the order row locked."""
    events.events_record([events.event_build(order, events.PAYMENT_STARTED, previous_status=order.status)])
    order_move(order, OrderStatus.PAYMENT_FAILED, events.PAYMENT_FAILED)
    order_give_back(order, to_status=OrderStatus.CANCELLED, event_type=events.CANCELLED)


def order_set_aside(*, order_id: int) -> bool:
    """Give up on paying a pending order that no batch can settle (it failed alone, again and
    again): it is failed and cancelled like an unpaid one, so its 202 still ends, CANCELLED, and
    its stock goes back. False if it was no longer pending (or a cancel holds it right now)."""
    with transaction.atomic():
        orders = _claim(1, only=[order_id], skip=frozenset())
        if not orders:
            return False
        PlacedItem.attach(orders)
        _fail_and_cancel(orders[0])
    return True


def _observe(batch: SettledBatch, *, waited_at_claim: list[float], started: float) -> None:
    """After the commit: the batch's size and time, and each paid order's time from acceptance
    to PAID (its wait until the claim, by PostgreSQL's clock, plus the batch's own time)."""
    took = time.monotonic() - started
    metrics.SETTLE_BATCH_SIZE.observe(batch.claimed)
    metrics.SETTLE_BATCH_DURATION.observe(took)
    for result, ids in (("paid", batch.paid), ("cancelled", batch.cancelled), ("retried", batch.retried)):
        if ids:
            metrics.SETTLED_ORDERS.labels(result).inc(len(ids))
    for waited in waited_at_claim:
        metrics.TIME_TO_PAID.observe(waited + took)


def _claim(limit: int, *, only: list[int] | None, skip: frozenset[int]) -> list[Order]:
    rows = sql_all(SETTLE_CLAIM.text, SETTLE_CLAIM.bind(queries.Claim(only=only, skip=sorted(skip), limit=limit)))
    orders = []
    for oid, uid, total, discount, coupon, waited in rows:
        order = Order(id=oid, user_id=uid, status=OrderStatus.PENDING_PAYMENT, total_amount=total,
                      discount_amount=discount, coupon_code=coupon)  # fmt: skip
        order.waited_at_claim = waited  # seconds since its acceptance, for the time-to-PAID histogram
        orders.append(order)
    return orders


def _mark_paid(orders: list[Order]) -> None:
    to_write = []
    for order in orders:
        to_write.append(events.event_build(order, events.PAYMENT_STARTED, previous_status=order.status))
        order.status, order.paid_amount = OrderStatus.PAID, order.total_amount - order.discount_amount
        to_write.append(events.event_build(order, events.PAID, previous_status=OrderStatus.PENDING_PAYMENT))
    paid = queries.MarkPaid(
        paid=OrderStatus.PAID, pending=OrderStatus.PENDING_PAYMENT,
        orders=orjson.dumps([{"id": o.id, "amount": o.paid_amount} for o in orders]).decode(),
    )  # fmt: skip
    (moved,) = sql_one(SETTLE_MARK_PAID.text, SETTLE_MARK_PAID.bind(paid, queries.NewEvents(events.as_json(to_write))))
    if moved != len(orders):  # cannot happen while the claim's row locks hold; never commit half a batch
        raise RuntimeError(f"settlement moved {moved} of {len(orders)} claimed orders")


# --- The settler process ------------------------------------------------------------------


def id_ranges(ids: list[int]) -> str:
    """Order ids as short runs, "7-9,12" (a batch claims by id, so mostly one run); "-" if none.
    The web process logs each accepted order's id with its request id: this leads there."""
    runs: list[list[int]] = []
    for order_id in sorted(ids):
        if runs and order_id == runs[-1][1] + 1:
            runs[-1][1] = order_id
        else:
            runs.append([order_id, order_id])
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in runs) or "-"


@dataclass
class SettlerTotals:
    batches: int = 0
    paid: int = 0
    cancelled: int = 0
    retried: int = 0
    set_aside: int = 0


class StopFlag:
    """Set from a signal handler to stop the settler after the batch in hand.

    A plain attribute, no lock: a threading.Event set from a handler deadlocks when the signal
    interrupts the main thread inside that Event's own wait() (its lock is not reentrant),
    which is where a settler spends its idle moments."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._set and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))
        return self._set


class _OrderQuarantine:
    """Finds the order that breaks a batch, so that one bad order never stops payment for all.

    A batch that failed (BatchFailed) is settled again one order at a time. An order that fails
    alone SETTLE_ORDER_MAX_TRIES times in a row is set aside: failed and cancelled, its stock
    given back (order_set_aside). One that cannot even be cancelled is left out of this
    settler's claims from then on and logged; the expiry job tries it again after
    ORDER_PAYMENT_TIMEOUT_SECONDS. Both counted in shop_settled_orders (set_aside, skipped),
    every failed try in shop_settlement_order_failures."""

    def __init__(self, *, max_tries: int) -> None:
        self.max_tries = max_tries
        self.skipped: set[int] = set()

    def settle_apart(self, order_ids: list[int]) -> SettledBatch:
        settled = SettledBatch()
        for order_id in order_ids:
            for attempt in range(1, self.max_tries + 1):
                try:
                    settled.add(orders_settle_batch(limit=1, only=[order_id]))
                    break
                except BatchFailed:
                    metrics.SETTLE_ORDER_FAILURES.inc()
                    logger.exception("order %s failed to settle alone (try %d of %d)", order_id, attempt,
                                     self.max_tries)  # fmt: skip
            else:
                self._set_aside(order_id, settled)
        return settled

    def settle_entries_apart(self, entries: list[intake.IntakeEntry]) -> SettledBatch:
        """The intake's entries of a failed batch, one at a time; one that fails alone
        SETTLE_ORDER_MAX_TRIES times is left unacknowledged, logged and counted (skipped): its
        units stay held, and nothing of it is written or charged."""
        settled = SettledBatch()
        for entry in entries:
            if entry.order_id in self.skipped:
                continue
            for attempt in range(1, self.max_tries + 1):
                try:
                    settled.add(intake_settle_batch([entry]))
                    break
                except BatchFailed:
                    metrics.SETTLE_ORDER_FAILURES.inc()
                    logger.exception("accepted order %s failed to settle alone (try %d of %d)", entry.order_id,
                                     attempt, self.max_tries)  # fmt: skip
            else:
                self.skipped.add(entry.order_id)
                metrics.SETTLED_ORDERS.labels("skipped").inc()
                logger.error("accepted order %s cannot be written; this settler skips it from now on", entry.order_id)
        return settled

    def _set_aside(self, order_id: int, settled: SettledBatch) -> None:
        try:
            if order_set_aside(order_id=order_id):
                settled.set_aside.append(order_id)
                metrics.SETTLED_ORDERS.labels("set_aside").inc()
                logger.error("order %s set aside: cancelled after %d failed tries to pay it", order_id, self.max_tries)
        except TRANSIENT_ERRORS:
            raise
        except Exception:
            self.skipped.add(order_id)
            metrics.SETTLED_ORDERS.labels("skipped").inc()
            logger.exception("order %s can be neither paid nor cancelled; this settler skips it from now on", order_id)


def settler_run(
    *,
    batch_size: int | None = None,
    stop: StopFlag | None = None,
    until_empty: bool = False,
) -> SettlerTotals:
    """Settle batches until `stop` is set (or, `until_empty`, until nothing is waiting).

    Each round takes the intake's entries first (this settler's unfinished ones, those a dead
    settler left for SETTLE_CLAIM_IDLE_MS, then new ones), else the orders waiting in the
    database (an order with a coupon or an Idempotency-Key, or one whose balance kept changing).
    Idle, it waits on the stream: an accepted order (or a database one's wake-up entry) wakes it
    at once, and it looks at the database at least every SETTLE_IDLE_WAIT_SECONDS.

    It never exits on an error. A database or Redis error rolls the batch back; the settler
    reconnects after a bounded pause and carries on, so every accepted order is settled once the
    database is back. A batch that fails for any other reason is settled again one order at a
    time, and the order at fault is set aside (_OrderQuarantine); the rest are paid."""
    stop = stop or StopFlag()
    limit = batch_size or settings.SETTLE_BATCH_SIZE
    totals = SettlerTotals()
    quarantine = _OrderQuarantine(max_tries=settings.SETTLE_ORDER_MAX_TRIES)
    consumer = f"{socket.gethostname()}-{os.getpid()}"
    pause = 0.05
    try:
        intake.group_ensure()  # and count what an earlier generation of Redis lost
    except (redis.RedisError, DatabaseError) as exc:
        logger.warning("intake not reachable at start (%s); settling what the database holds", exc)
    while not stop.is_set():
        try:
            started = time.monotonic()
            batch = _settle_round(consumer=consumer, limit=limit, quarantine=quarantine)
        except IntakeNotReady as exc:
            logger.info("intake batch waits: %s", exc)
            stop.wait(pause)
            pause = min(pause * 2, 2.0)
            continue
        except Exception as exc:
            log = (
                logger.warning
                if isinstance(exc, (DatabaseError, psycopg.Error, redis.RedisError))
                else logger.exception
            )
            log("settlement batch failed (%s: %s); retrying in %.2f s", type(exc).__name__, exc, pause)
            connection.close()
            stop.wait(pause)
            pause = min(pause * 2, 2.0)
            continue
        pause = 0.05
        if batch.claimed:
            totals.batches += 1
            totals.paid += len(batch.paid)
            totals.cancelled += len(batch.cancelled)
            totals.retried += len(batch.retried)
            totals.set_aside += len(batch.set_aside)
            logger.info(
                "settled batch: %d paid, %d cancelled, %d retried in %.1f ms; orders paid %s, cancelled %s, "
                "set aside %s", len(batch.paid), len(batch.cancelled), len(batch.retried),
                (time.monotonic() - started) * 1000, id_ranges(batch.paid), id_ranges(batch.cancelled),
                id_ranges(batch.set_aside),
            )  # fmt: skip
        if batch.claimed >= limit or batch.retried:
            continue  # more is waiting
        if batch.claimed and settings.SETTLE_BATCH_WINDOW_MS:
            stop.wait(settings.SETTLE_BATCH_WINDOW_MS / 1000)  # orders are coming: let a batch gather
            continue
        if until_empty and not _anything_waiting():
            break
        _idle_wait(consumer=consumer, stop=stop)
    return totals


def _settle_round(*, consumer: str, limit: int, quarantine: _OrderQuarantine) -> SettledBatch:
    try:
        entries = intake.entries_read(consumer=consumer, count=limit, claim_idle_ms=settings.SETTLE_CLAIM_IDLE_MS)
    except redis.RedisError as exc:  # the orders waiting in the database need no Redis to be paid
        logger.warning("intake unreachable (%s); settling the database's orders", exc)
        entries = []
    if entries:
        try:
            return intake_settle_batch(entries)
        except BatchFailed as failed:
            logger.exception("%s; settling them one at a time", failed)
            return quarantine.settle_entries_apart(entries)
    try:
        skip = frozenset(quarantine.skipped) if quarantine.skipped else frozenset()
        return orders_settle_batch(limit=limit, skip=skip)
    except BatchFailed as failed:
        logger.exception("%s; settling them one at a time", failed)
        return quarantine.settle_apart(failed.order_ids)


def _idle_wait(*, consumer: str, stop: StopFlag) -> None:
    """Until the stream has something (an accepted order, or a database order's wake-up entry) or
    SETTLE_IDLE_WAIT_SECONDS passed, in slices of at most half a second so that a stop is seen
    soon (SIGTERM never waits out a long poll)."""
    deadline = time.monotonic() + settings.SETTLE_IDLE_WAIT_SECONDS
    while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
        slice_ms = max(1, int(min(left, 0.5) * 1000))
        try:
            if intake.settlers_wait(consumer=consumer, block_ms=slice_ms):
                return
        except redis.RedisError:  # Redis away: wait the slice out, the database is looked at after
            stop.wait(slice_ms / 1000)


def _anything_waiting() -> bool:
    return intake.intake_backlog() > 0 or Order.objects.filter(status=OrderStatus.PENDING_PAYMENT).exists()
