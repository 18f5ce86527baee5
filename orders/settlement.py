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

import contextlib
import logging
import time
from dataclasses import dataclass, field

import orjson
import psycopg
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection, connections, transaction

from accounts.services import WithdrawalOutcome
from kernel import metrics
from kernel.database import sql_all, sql_one
from orders import events, queries
from orders.models import Order, OrderStatus, PlacedItem
from orders.queries import SETTLE_CHANNEL, SETTLE_CLAIM, SETTLE_MARK_PAID
from orders.status import order_give_back, order_move
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


class _Wakeup:
    """A LISTEN on its own connection: wait() returns at the first NOTIFY (or the timeout).

    LISTEN is in place before the settler looks for work, so an order committed between an
    empty claim and the wait still wakes it: its notification is already queued here."""

    def __init__(self) -> None:
        self._db = None

    def listen(self) -> None:
        if self._db is None:
            db = connections.create_connection("default")
            db.ensure_connection()
            db.connection.autocommit = True
            db.connection.execute(f"LISTEN {SETTLE_CHANNEL}")
            self._db = db

    def wait(self, timeout: float, *, stop: StopFlag | None = None) -> None:
        """Until the first notification, `timeout` or `stop`; then read what else is queued. A
        signal does not end the socket's wait, so `stop` is looked at every 0.1 s."""
        if self._db is None:  # lost a moment ago: look for work again at once
            return
        deadline = time.monotonic() + timeout
        with self._reconnecting_on_error():
            while (left := deadline - time.monotonic()) > 0 and not (stop and stop.is_set()):
                if next(self._db.connection.notifies(timeout=min(left, 0.1), stop_after=1), None):
                    break
            self._read_queued()

    def drain(self) -> None:
        """Read the notifications queued meanwhile (many commits, one wake-up), so that none
        pile up in PostgreSQL's notification queue while the settler is busy."""
        if self._db is None:
            return
        with self._reconnecting_on_error():
            self._read_queued()

    def _read_queued(self) -> None:
        for _ in self._db.connection.notifies(timeout=0.001):
            pass

    @contextlib.contextmanager
    def _reconnecting_on_error(self):
        """A lost connection (PostgreSQL restarting) costs one wake-up: the next listen()
        connects again, and the settler looks for work either way."""
        try:
            yield
        except (DatabaseError, InterfaceError, psycopg.Error, OSError) as exc:
            logger.warning("settlement wake-up lost (%s); reconnecting", exc)
            self.close()

    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(Exception):  # a dead connection: nothing left to close
                self._db.close()
            self._db = None


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
        self.skipped: frozenset[int] = frozenset()  # a new set per order skipped, none per batch

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

    def _set_aside(self, order_id: int, settled: SettledBatch) -> None:
        try:
            if order_set_aside(order_id=order_id):
                settled.set_aside.append(order_id)
                metrics.SETTLED_ORDERS.labels("set_aside").inc()
                logger.error("order %s set aside: cancelled after %d failed tries to pay it", order_id, self.max_tries)
        except TRANSIENT_ERRORS:
            raise
        except Exception:
            self.skipped |= {order_id}
            metrics.SETTLED_ORDERS.labels("skipped").inc()
            logger.exception("order %s can be neither paid nor cancelled; this settler skips it from now on", order_id)


def settler_run(
    *,
    batch_size: int | None = None,
    stop: StopFlag | None = None,
    until_empty: bool = False,
) -> SettlerTotals:
    """Settle batches until `stop` is set (or, `until_empty`, until nothing is pending).

    It never exits on an error. A database error (PostgreSQL restarting, a deadlock between two
    batches) rolls the batch back; the settler reconnects after a bounded pause and carries on,
    so every accepted order is settled once the database is back. A batch that fails for any
    other reason is settled again one order at a time, and the order at fault is set aside
    (_OrderQuarantine); the rest are paid."""
    stop = stop or StopFlag()
    limit = batch_size or settings.SETTLE_BATCH_SIZE
    totals = SettlerTotals()
    wakeup = _Wakeup()
    quarantine = _OrderQuarantine(max_tries=settings.SETTLE_ORDER_MAX_TRIES)
    pause = 0.05
    try:
        while not stop.is_set():
            try:
                wakeup.listen()
                started = time.monotonic()
                try:
                    batch = orders_settle_batch(limit=limit, skip=quarantine.skipped)
                except BatchFailed as failed:
                    logger.exception("%s; settling them one at a time", failed)
                    batch = quarantine.settle_apart(failed.order_ids)
            except Exception as exc:
                log = logger.warning if isinstance(exc, (DatabaseError, psycopg.Error)) else logger.exception
                log("settlement batch failed (%s: %s); retrying in %.2f s", type(exc).__name__, exc, pause)
                connection.close()
                wakeup.close()
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
                wakeup.drain()
                continue
            if until_empty and not Order.objects.filter(status=OrderStatus.PENDING_PAYMENT).exists():
                break
            wakeup.wait(settings.SETTLE_IDLE_WAIT_SECONDS, stop=stop)
    finally:
        wakeup.close()
    return totals
