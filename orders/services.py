"""Placing and cancelling orders: the one place that calls inventory, coupons and payments.

Reading the order path (docs/design.md): order_place names its steps; the statements it runs
are written out whole in orders/sql/*.sql, composed in orders/queries.py from each app's own."""

from __future__ import annotations

import datetime
import logging
import time
import uuid
from dataclasses import dataclass

import orjson
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.errors import AccountMissing, InsufficientBalance
from accounts.models import BalanceEntry
from accounts.queries import BalanceChange
from accounts.services import balance_retry
from coupons.services import coupon_discount, coupon_redeem
from inventory.errors import ReservationLost
from inventory.queries import QuotedPrices, ReservationToken, StockEpoch, StockSale
from inventory.redis_counts import AdmissionCounter
from inventory.services import Reservation
from kernel.database import Statement, sql_one
from kernel.errors import DomainError, ServiceUnavailable
from orders import events, idempotency, intake
from orders.backlog import payment_backlog_check
from orders.errors import CancelWindowClosed, InvalidStatusTransition, OrderNotFound, TooManyUnpaidOrders
from orders.limits import order_admission_counters, unpaid_orders_cap
from orders.models import ALLOWED_TRANSITIONS, Order, OrderStatus, PlacedItem
from orders.queries import (
    ACCEPT_ORDER,
    INSERT_ORDER,
    INSERT_PENDING_ORDER,
    PAY_ORDER,
    NewEvents,
    NewOrder,
    UnpaidCap,
)
from orders.results import PlacedOrder, Placement
from orders.status import order_give_back, order_lock, order_move
from orders.stock_hold import OrderLine, ReservedInRedis, StockHold, prices_checked, stock_hold
from payments.queries import NewPayment
from payments.references import order_reference
from payments.services import payment_take

__all__ = ["OrderLine", "PlacedOrder", "order_cancel", "order_place", "orders_expire_pending"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Placing:
    """One order being placed, as every step needs it."""

    user_id: int
    lines: list[OrderLine]
    quantities: dict[int, int]  # units by product (a product may stand on several lines)
    quoted: dict[int, int] | None  # the price seen for each product; None if two lines disagree
    coupon_code: str | None
    claim: idempotency.Claim | None
    counters: tuple[AdmissionCounter, ...]
    wanted: Placement  # PAID now, or ACCEPTED for a settler to pay

    @property
    def pay_now(self) -> bool:
        return self.wanted is Placement.PAID


def order_place(
    *,
    user_id: int,
    lines: list[OrderLine],
    coupon_code: str | None = None,
    idempotency_key: str | None = None,
    fingerprint: str = "",
    asynchronous: bool = False,
    client_ip: str = "",
) -> PlacedOrder:
    """Reserve stock, record the order, redeem the coupon and pay, all or nothing: PAID, or
    with `asynchronous=True` ACCEPTED (PENDING_PAYMENT, a settler pays it in its next batch:
    orders/settlement.py); or the answer an earlier request with the same Idempotency-Key got.

    1. Take the Idempotency-Key (or return its earlier answer, not counted against the limits).
    2. Asynchronously, refuse while payment runs more than PAYMENT_BACKLOG_MAX_SECONDS behind.
    3. Count the order against the caller's rate limits (per user, per `client_ip`) as its
       stock is held, within each product's purchase limit (orders/limits.py).
    4. Place it: in one statement (the usual order, _fits_one_statement) or step by step in one
       transaction; an asynchronous order is refused while its user has
       ORDER_UNPAID_LIMIT_PER_USER unpaid ones.
    5. Record the key's answer: with the order, in its transaction; a replayable refusal
       (DomainError.replayable) after it; any other failure gives the key up.

    A refused order holds nothing: any failure after the stock is held gives it back before the
    error reaches the client; a crash leaves a reservation to reconciliation.

    Raises NOT_FOUND, PRODUCT_UNAVAILABLE, PRICE_CHANGED, RATE_LIMITED, OUT_OF_STOCK,
    PURCHASE_LIMIT_REACHED, TOO_MANY_UNPAID_ORDERS, COUPON_INVALID, INSUFFICIENT_BALANCE,
    ACCOUNT_MISSING, BALANCE_CONFLICT, LOCK_TIMEOUT (old design), CONFLICT (the key's: reused,
    in progress, taken over; or the stock reservation lost), TOO_MANY_IDEMPOTENCY_KEYS,
    SERVICE_UNAVAILABLE (payment backlog, stock not loaded, a backing service down).
    """
    claim = None
    if idempotency_key:
        claim = idempotency.begin(user_id=user_id, key=idempotency_key, fingerprint=fingerprint)
        if isinstance(claim, PlacedOrder):
            return claim
    placing = _Placing(
        user_id=user_id, lines=lines, quantities=_quantities(lines), quoted=_quoted_prices(lines),
        coupon_code=coupon_code, claim=claim, counters=order_admission_counters(user_id=user_id, client_ip=client_ip),
        wanted=Placement.ACCEPTED if asynchronous else Placement.PAID,
    )  # fmt: skip
    try:
        if _takes_the_intake(placing) and (accepted := _accept_in_redis(placing)) is not None:
            return accepted
        if not placing.pay_now:
            payment_backlog_check()
        if _fits_one_statement(placing):
            placed = _place_in_one_statement(placing)
        else:
            placed = _place_step_by_step(placing, stock_hold(lines=lines, quantities=placing.quantities,
                                                             user_id=user_id, counters=placing.counters))  # fmt: skip
    except DomainError as error:
        if claim:
            if error.replayable:
                idempotency.record_error(claim=claim, error=error)
            else:
                _give_up_key(claim)
        raise
    except BaseException:
        if claim:
            _give_up_key(claim)
        raise
    if placed.placement is Placement.ACCEPTED:
        intake.settlers_wake()  # committed: an idle settler looks in the database at once
    return placed


def _takes_the_intake(placing: _Placing) -> bool:
    """The usual asynchronous order is accepted by Redis alone (orders/intake.py): not one with
    a coupon (its discount and use are the database's) or an Idempotency-Key (its answer commits
    with the order), nor two lines quoting one product at different prices, nor the old design."""
    return (
        not placing.pay_now
        and intake.intake_in_use()
        and settings.ORDER_STRATEGY != "old"
        and not placing.coupon_code
        and not placing.claim
        and placing.quoted is not None
    )


def _accept_in_redis(placing: _Placing) -> PlacedOrder | None:
    """None if the catalogue's mirror in Redis does not know one of the products (nothing was
    counted or reserved: the database's path decides)."""
    accepted = intake.intake_accept(user_id=placing.user_id, quantities=placing.quantities, quoted=placing.quoted,
                                    counters=placing.counters, unpaid_cap=unpaid_orders_cap())  # fmt: skip
    if accepted is None:
        return None
    return PlacedOrder(order=accepted.as_order(), placement=Placement.ACCEPTED)


def _fits_one_statement(placing: _Placing) -> bool:
    """The usual order is one statement in autocommit (one round trip, its own commit), which
    checks the quoted prices itself. It takes the new design's reservation, and writes nothing
    but the order, its sale and (paid now) its payment, so not for an order that needs more:
    the old design's product locks around a transaction, a coupon (its discount and use are
    worked out in the transaction), an Idempotency-Key (its answer commits with the order), two
    lines quoting one product at different prices (no single quote to fence), or a paid order
    with nothing to pay (the statement always writes a balance change; a free order writes none)."""
    return (
        settings.ORDER_STRATEGY != "old"
        and not placing.coupon_code
        and not placing.claim
        and placing.quoted is not None
        and (not placing.pay_now or any(placing.quoted.values()))
    )


def _give_up_key(claim: idempotency.Claim) -> None:
    try:
        idempotency.give_up(claim=claim)
    except Exception:  # the database is the likely cause: the key is taken over once stale
        logger.warning("could not release Idempotency-Key %r of user %s", claim.key, claim.user_id, exc_info=True)


def _quantities(lines: list[OrderLine]) -> dict[int, int]:
    """The same product may stand on several lines (the seed's script sends such orders)."""
    quantities: dict[int, int] = {}
    for line in lines:
        quantities[line.product_id] = quantities.get(line.product_id, 0) + line.quantity
    return quantities


def _total(quantities: dict[int, int], prices: dict[int, int]) -> int:
    return sum(prices[pid] * qty for pid, qty in quantities.items())


def _quoted_prices(lines: list[OrderLine]) -> dict[int, int] | None:
    """The price the caller saw for each product, or None if two lines disagree on one."""
    quoted: dict[int, int] = {}
    for line in lines:
        if quoted.setdefault(line.product_id, line.seen_price) != line.seen_price:
            return None
    return quoted


# --- The usual order: one statement ------------------------------------------------------


def _place_in_one_statement(placing: _Placing) -> PlacedOrder:
    """Reserve, then write the order in one statement fenced by the stock epoch and by the
    quoted prices (checked there, not read before): any failure gives the reservation back.
    Errors keep the precedence of the other path: a product missing, off sale or repriced is
    named before its stock or the balance (looked up only once something failed)."""
    hold = ReservedInRedis(lines=placing.lines, quantities=placing.quantities, user_id=placing.user_id,
                           counters=placing.counters)  # fmt: skip
    written = {"user_id": placing.user_id, "quantities": placing.quantities, "prices": placing.quoted,
               "reservation": hold.reserve()}  # fmt: skip
    try:
        try:
            if placing.pay_now:
                return PlacedOrder(order=_pay_order(**written), placement=Placement.PAID)
            return PlacedOrder(order=_accept_order(**written), placement=Placement.ACCEPTED)
        except ReservationLost:  # or the fence's other half: the quoted prices no longer hold
            prices_checked(placing.lines, placing.quantities)
            raise
    except BaseException:
        hold.give_back()
        raise


def _accept_order(
    *, user_id: int, quantities: dict[int, int], prices: dict[int, int], reservation: Reservation
) -> Order:
    """An asynchronous order without coupon or Idempotency-Key, and its sale, in one statement
    committed on its own: a settler pays it later. All of it is written, or none (ReservationLost
    if the sale cannot be recorded, TooManyUnpaidOrders if its user has too many waiting)."""
    order, new_order, new_events = _new_order(user_id=user_id, coupon_code="", quantities=quantities, prices=prices,
                                              token=reservation.token, paid=False)  # fmt: skip
    cap = UnpaidCap(cap=unpaid_orders_cap())
    params = ACCEPT_ORDER.bind(new_order, new_events, *_sold(reservation, quantities), QuotedPrices.of(prices), cap)
    order_id, created_at, unpaid, fence_holds, _ = _run_fenced(ACCEPT_ORDER, params)
    if not fence_holds:  # the stock epoch moved on (Redis lost the reservation and stock was
        raise ReservationLost()  # rebuilt), or the quoted prices no longer hold
    if order_id is None:
        raise TooManyUnpaidOrders(details={"limit": cap.cap, "unpaid": unpaid})
    return _written(order, (order_id, created_at))


def _pay_order(*, user_id: int, quantities: dict[int, int], prices: dict[int, int], reservation: Reservation) -> Order:
    """A synchronous order without coupon or Idempotency-Key: the order PAID, its sale, its
    payment and the balance change in one statement committed on its own. A balance version
    that moved meanwhile writes nothing and is retried (bounded, jittered, counted).

    Raises InsufficientBalance, ReservationLost, BalanceConflict, AccountMissing."""
    total = _total(quantities, prices)
    order, new_order, new_events = _new_order(user_id=user_id, coupon_code="", quantities=quantities, prices=prices,
                                              token=reservation.token, paid=True)  # fmt: skip
    params = PAY_ORDER.bind(
        new_order, new_events, *_sold(reservation, quantities), QuotedPrices.of(prices),
        NewPayment.captured(user_id=user_id, amount=total),
        BalanceChange(user_id=user_id, amount=-total, kind=BalanceEntry.Kind.PAYMENT),
    )  # fmt: skip

    def attempt_once() -> Order | None:
        row = _run_fenced(PAY_ORDER, params)
        if row is None:
            raise AccountMissing(details={"userId": user_id})
        balance, fence_holds, order_id, created_at = row
        if order_id is not None:
            return _written(order, (order_id, created_at))
        if not fence_holds:  # the stock epoch or the quoted prices
            raise ReservationLost()
        if balance < total:
            raise InsufficientBalance(details={"balance": balance, "required": total})
        return None  # the balance's version moved on: lost the race

    return balance_retry(attempt_once, user_id=user_id)


def _sold(reservation: Reservation, quantities: dict[int, int]) -> tuple[ReservationToken, StockEpoch, StockSale]:
    """The sale's part of an order's statement: the reservation's token and epoch, its units."""
    return (
        ReservationToken(token=reservation.token),
        StockEpoch.of(reservation.epochs),
        StockSale.of(reservation=reservation, quantities=quantities),
    )


def _run_fenced(statement: Statement, params: dict[str, object]) -> tuple | None:
    try:
        return sql_one(statement.text, params)
    except IntegrityError as exc:  # reconciliation released the reservation first
        raise ReservationLost() from exc


# --- Every other order: step by step, in one transaction -----------------------------------


def _place_step_by_step(placing: _Placing, hold: StockHold) -> PlacedOrder:
    """One transaction: the order, its stock, the payment (paid now), the coupon use, its events
    and the key's answer, under the stock `hold` (either design). Lock order: the account row
    (locked by the balance's version update, retried while the version moves) before the coupon
    row (locked by its use count): the coupon's discount is worked out first without a lock and
    its use taken last, so a buyer whose balance keeps being retried never holds a coupon that
    other buyers are waiting for. An accepted order's INSERT wakes a settler as it commits.

    Paid now without a coupon, the paid amount is known before anything is written: the order
    is written PAID at once, with both its events, saving a status update. Nobody sees it
    before the payment commits with it; if the payment fails, none of it is written."""
    user_id, coupon_code = placing.user_id, placing.coupon_code
    with hold.hold() as prices:
        total = _total(placing.quantities, prices)
        with transaction.atomic():
            order = _insert_order(placing, prices=prices, token=hold.token)
            reference = order_reference(order.id)
            hold.record_sale(reference)
            discount = coupon_discount(code=coupon_code, order_amount=total) if coupon_code else 0
            if placing.pay_now:
                payment_take(order_id=order.id, user_id=user_id, amount=total - discount,
                             max_attempts=hold.payment_attempts)  # fmt: skip
            if coupon_code:
                coupon_redeem(code=coupon_code, user_id=user_id, order_amount=total, reference=reference,
                              discount=discount)  # fmt: skip
            if placing.pay_now:
                if order.status != OrderStatus.PAID:  # not written PAID at once: its coupon's discount
                    order_move(order, OrderStatus.PAID, events.PAID, discount_amount=discount,
                               paid_amount=total - discount)  # fmt: skip
            elif discount:  # accepted: the settler charges the total less the discount
                Order.objects.filter(pk=order.pk).update(discount_amount=discount)
                order.discount_amount = discount
            placed = PlacedOrder(order=order, placement=placing.wanted)
            if placing.claim:
                idempotency.record_order(claim=placing.claim, placed=placed)
    return placed


def _insert_order(placing: _Placing, *, prices: dict[int, int], token: uuid.UUID) -> Order:
    """Inside the order's transaction: the order, written PAID at once when paid now without a
    coupon (see _new_order). An accepted order waits for a settler, and is refused
    (TooManyUnpaidOrders) if its user has too many waiting."""
    order, new_order, new_events = _new_order(user_id=placing.user_id, coupon_code=placing.coupon_code or "",
                                              quantities=placing.quantities, prices=prices, token=token,
                                              paid=placing.pay_now and not placing.coupon_code)  # fmt: skip
    reservation = ReservationToken(token=token)  # the order row keeps it
    if placing.pay_now:
        return _written(order, sql_one(INSERT_ORDER.text, INSERT_ORDER.bind(new_order, new_events, reservation)))
    cap = UnpaidCap(cap=unpaid_orders_cap())
    params = INSERT_PENDING_ORDER.bind(new_order, new_events, reservation, cap)
    order_id, created_at, unpaid, _fence_holds, _ = sql_one(INSERT_PENDING_ORDER.text, params)
    if order_id is None:
        raise TooManyUnpaidOrders(details={"limit": cap.cap, "unpaid": unpaid})
    return _written(order, (order_id, created_at))


def _new_order(
    *, user_id: int, coupon_code: str, quantities: dict[int, int], prices: dict[int, int], token: uuid.UUID, paid: bool
) -> tuple[Order, NewOrder, NewEvents]:
    """The order about to be written, and its part of the statement's parameters: PENDING_PAYMENT
    with its order.created event, or (`paid`) PAID in full with order.created and order.paid."""
    total = _total(quantities, prices)
    order = Order(user_id=user_id, status=OrderStatus.PENDING_PAYMENT, total_amount=total, coupon_code=coupon_code,
                  reservation_token=token)  # fmt: skip
    order.items_cache = [PlacedItem(pid, quantity, prices[pid]) for pid, quantity in quantities.items()]
    to_write = [events.event_build(order, events.CREATED)]
    if paid:
        order.status, order.paid_amount = OrderStatus.PAID, total
        to_write.append(events.event_build(order, events.PAID, previous_status=OrderStatus.PENDING_PAYMENT))
    items_json = orjson.dumps(
        [{"product_id": i.product_id, "quantity": i.quantity, "unit_price": i.unit_price} for i in order.items_cache]
    ).decode()
    new_order = NewOrder(user_id=user_id, status=order.status, total=total, paid_amount=order.paid_amount,
                         coupon_code=coupon_code, items=items_json)  # fmt: skip
    return order, new_order, NewEvents(events=events.as_json(to_write))


def _written(order: Order, row: tuple) -> Order:
    order.id, order.created_at = row[0], row[1]
    order.updated_at = order.created_at
    return order


def order_cancel(*, order_id: int, user_id: int) -> Order:
    """The buyer cancels an order: refund its payment, give the coupon use and the stock (and
    with it the purchase-limit allowance) back. A paid order only within
    ORDER_CANCEL_WINDOW_SECONDS of being placed: a flash sale's stock is not a free option.

    An order the intake holds (not yet drained) is cancelled there, and its settler writes it
    CANCELLED, its stock given back; one a settler is writing right now is waited for.

    The order row is locked for the cancellation, so two cancels cannot both refund; refund,
    coupon release, the stock ledger and the event commit together, and Redis gets the units
    after the commit (a crash in between leaves Redis short until reconciliation adds them
    back). Raises NOT_FOUND, INVALID_STATUS or CANCEL_WINDOW_CLOSED.
    """
    answer = intake.accepted_order_cancel(order_id=order_id, user_id=user_id)
    if answer.outcome == "cancelled":
        return answer.order.as_order()
    if answer.outcome == "already":
        raise InvalidStatusTransition(details={"from": OrderStatus.CANCELLED, "to": OrderStatus.CANCELLED})
    if answer.outcome == "settling":
        _wait_until_written(order_id)
    with transaction.atomic():
        order = order_lock(order_id, user_id=user_id)
        if order is None:
            raise OrderNotFound()
        if OrderStatus.CANCELLED not in ALLOWED_TRANSITIONS[order.status]:
            raise InvalidStatusTransition(details={"from": order.status, "to": OrderStatus.CANCELLED})
        _check_cancel_window(order)
        order_give_back(order, to_status=OrderStatus.CANCELLED, event_type=events.CANCELLED)
    return order


def _wait_until_written(order_id: int, *, timeout: float = 5.0) -> None:
    """A settler is writing the order: it is in the database within a batch's time."""
    deadline = time.monotonic() + timeout
    while not Order.objects.filter(pk=order_id).exists():
        if time.monotonic() > deadline:
            raise ServiceUnavailable(details={"orderId": order_id}, retry_after=1)
        time.sleep(0.02)


def _check_cancel_window(order: Order) -> None:
    window = settings.ORDER_CANCEL_WINDOW_SECONDS
    closes_at = order.created_at + datetime.timedelta(seconds=window)
    if order.status == OrderStatus.PAID and timezone.now() >= closes_at:
        raise CancelWindowClosed(details={"windowSeconds": window, "closedAt": closes_at})


def orders_expire_pending(*, older_than_seconds: float | None = None) -> list[int]:
    """Cancel orders still PENDING_PAYMENT after the timeout, so a lost payment task never
    holds stock for ever. Orders whose payment is running right now (row locked) are skipped
    and looked at next time."""
    timeout = settings.ORDER_PAYMENT_TIMEOUT_SECONDS if older_than_seconds is None else older_than_seconds
    cutoff = timezone.now() - datetime.timedelta(seconds=timeout)
    expired = []
    candidates = Order.objects.filter(status=OrderStatus.PENDING_PAYMENT, created_at__lt=cutoff).values_list(
        "id", flat=True
    )
    for order_id in list(candidates[:1000]):
        with transaction.atomic():
            order = order_lock(order_id, skip_locked=True)
            if order is None or order.status != OrderStatus.PENDING_PAYMENT:
                continue
            order_give_back(order, to_status=OrderStatus.CANCELLED, event_type=events.CANCELLED)
            expired.append(order_id)
    if expired:
        logger.warning("cancelled %d orders left unpaid past %ss", len(expired), timeout)
    return expired
