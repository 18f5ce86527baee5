"""Placing and cancelling orders: the one place that calls inventory, coupons and payments."""

from __future__ import annotations

import datetime
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import orjson
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.errors import AccountMissing, InsufficientBalance
from accounts.models import BalanceEntry
from accounts.services import balance_change_ctes, balance_entry_cte, balance_params, balance_retry
from coupons.services import coupon_discount, coupon_redeem, coupon_release
from inventory.errors import OutOfStock, ReservationLost
from inventory.legacy import product_locks, stock_take_locked
from inventory.services import (
    EPOCH_AND_PRICES_FENCE_SQL,
    Reservation,
    prices_for_order,
    quoted_prices_params,
    stock_record_sale,
    stock_release,
    stock_reserve,
    stock_return,
    stock_sale_params,
    stock_sale_sql,
)
from inventory.stock import AdmissionCounter
from kernel.database import sql_execute, sql_one
from orders import events, idempotency
from orders.backlog import payment_backlog_check
from orders.errors import (
    CancelWindowClosed,
    InvalidStatusTransition,
    OrderNotFound,
    PriceChanged,
    TooManyUnpaidOrders,
)
from orders.limits import order_admission_counters, unpaid_orders_cap
from orders.models import ALLOWED_TRANSITIONS, PENDING_SQL, Order, OrderStatus
from payments.services import payment_insert_cte, payment_params, payment_refund, payment_take

SETTLE_CHANNEL = "orders_pending"  # settlers LISTEN here (orders/settlement.py)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OrderLine:
    product_id: int
    quantity: int
    seen_price: int


@dataclass(frozen=True)
class PlacedOrder:
    order: Order
    status_code: int = 201
    replayed: bool = False


def _quantities(lines: list[OrderLine]) -> dict[int, int]:
    """The same product may stand on several lines (the seed's script sends such orders)."""
    quantities: dict[int, int] = {}
    for line in lines:
        quantities[line.product_id] = quantities.get(line.product_id, 0) + line.quantity
    return quantities


def _total(quantities: dict[int, int], prices: dict[int, int]) -> int:
    return sum(prices[pid] * qty for pid, qty in quantities.items())


def _check_prices(lines: list[OrderLine], prices: dict[int, int]) -> None:
    changed = sorted({line.product_id for line in lines if line.seen_price != prices[line.product_id]})
    if changed:
        raise PriceChanged(details={"currentPrices": {str(pid): prices[pid] for pid in changed}})


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
    """Reserve stock, record the order, redeem the coupon and pay, all or nothing.

    The reservation also counts the order against the caller's rate limits (per user, per
    `client_ip`) and checks each product's purchase limit (units the caller holds, paid or in
    flight); an asynchronous order is refused while the caller has ORDER_UNPAID_LIMIT_PER_USER
    unpaid ones (orders/limits.py). A refused order reserves nothing.

    With `asynchronous=True` the order is recorded PENDING_PAYMENT (answer 202), unless payment
    is running more than PAYMENT_BACKLOG_MAX_SECONDS behind (SERVICE_UNAVAILABLE, nothing
    reserved); a settler pays it in its next batch (orders/settlement.py).

    Stock is reserved in Redis first (no database lock on products), then one transaction
    writes the order, the stock sale, the coupon use and the payment. Any failure after the
    reservation gives the stock back before the error reaches the client; a crash leaves the
    reservation to reconciliation. (ORDER_STRATEGY=old takes the report's path instead: product
    locks around a database decrement, no balance retry, LOCK_TIMEOUT.)
    Raises NOT_FOUND, PRODUCT_UNAVAILABLE, PRICE_CHANGED, RATE_LIMITED, OUT_OF_STOCK,
    PURCHASE_LIMIT_REACHED, TOO_MANY_UNPAID_ORDERS, COUPON_INVALID, INSUFFICIENT_BALANCE,
    CONFLICT, SERVICE_UNAVAILABLE.
    """
    claim = None
    if idempotency_key:
        claim = idempotency.begin(user_id=user_id, key=idempotency_key, fingerprint=fingerprint)
        if isinstance(claim, PlacedOrder):
            return claim  # the key's earlier answer (a replay is not counted against the rate limits)
    counters = order_admission_counters(user_id=user_id, client_ip=client_ip)
    try:
        return _place(user_id=user_id, lines=lines, coupon_code=coupon_code, claim=claim, counters=counters,
                      pay_now=not asynchronous)  # fmt: skip
    except idempotency.REMEMBERED_ERRORS as error:
        if claim:
            idempotency.record_error(claim=claim, error=error)
        raise
    except BaseException:
        if claim:
            _give_up_key(claim)
        raise


def _give_up_key(claim: idempotency.Claim) -> None:
    try:
        idempotency.give_up(claim=claim)
    except Exception:  # the database is the likely cause: the key is taken over once stale
        logger.warning("could not release Idempotency-Key %r of user %s", claim.key, claim.user_id, exc_info=True)


def _place(
    *,
    user_id: int,
    lines: list[OrderLine],
    coupon_code: str | None,
    claim: idempotency.Claim | None,
    counters: tuple[AdmissionCounter, ...],
    pay_now: bool,
) -> PlacedOrder:
    if not pay_now:
        payment_backlog_check()
    quantities = _quantities(lines)
    quoted = _quoted_prices(lines)
    # The usual order (no coupon, no Idempotency-Key, something to pay when paid now) is one
    # statement that also checks the quoted prices; every other order reads them first.
    usual = settings.ORDER_STRATEGY != "old" and not coupon_code and not claim and quoted is not None
    if usual and (not pay_now or any(quoted.values())):
        return _place_in_one_statement(user_id=user_id, lines=lines, quantities=quantities, prices=quoted,
                                       counters=counters, pay_now=pay_now)  # fmt: skip
    record = partial(
        _record_order,
        pay_now=pay_now,
        user_id=user_id,
        quantities=quantities,
        coupon_code=coupon_code,
        claim=claim,
    )
    if settings.ORDER_STRATEGY == "old":  # the report's design, for comparison: no rate or purchase limits
        prices = _prices_checked(lines, quantities)
        with product_locks(list(quantities)):
            return record(
                prices=prices,
                token=uuid.uuid4(),
                take_stock=lambda reference: stock_take_locked(quantities=quantities, reference=reference),
                payment_attempts=1,
            )

    # Reserved first, as the usual order is: the reservation counts the attempt against the rate
    # limits, so an order refused for its prices or products is counted as every other one.
    reservation = _reserve_or_name_the_product(lines=lines, quantities=quantities, user_id=user_id, counters=counters)
    try:
        return record(
            prices=_prices_checked(lines, quantities),
            token=reservation.token,
            take_stock=lambda reference: stock_record_sale(
                reservation=reservation, quantities=quantities, reference=reference
            ),
        )
    except BaseException:
        _release_after_failure(reservation.token)
        raise


def _reserve_or_name_the_product(
    *, lines: list[OrderLine], quantities: dict[int, int], user_id: int, counters: tuple[AdmissionCounter, ...]
) -> Reservation:
    """stock_reserve, its refusal for stock named as the other path names it: a product that is
    missing, off sale or repriced before its stock (a product not for sale has no stock either)."""
    try:
        return stock_reserve(quantities=quantities, holder=user_id, counters=counters)
    except OutOfStock:
        _prices_checked(lines, quantities)
        raise


def _quoted_prices(lines: list[OrderLine]) -> dict[int, int] | None:
    """The price the caller saw for each product, or None if two lines disagree on one."""
    quoted: dict[int, int] = {}
    for line in lines:
        if quoted.setdefault(line.product_id, line.seen_price) != line.seen_price:
            return None
    return quoted


def _prices_checked(lines: list[OrderLine], quantities: dict[int, int]) -> dict[int, int]:
    """The database's prices, every product on sale and priced as the caller saw it. Raises
    NOT_FOUND, PRODUCT_UNAVAILABLE, PRICE_CHANGED."""
    prices = prices_for_order(product_ids=list(quantities))
    _check_prices(lines, prices)
    return prices


def _place_in_one_statement(
    *,
    user_id: int,
    lines: list[OrderLine],
    quantities: dict[int, int],
    prices: dict[int, int],
    counters: tuple[AdmissionCounter, ...],
    pay_now: bool,
) -> PlacedOrder:
    """Reserve, then write the order in one statement fenced by the stock epoch and by the
    quoted `prices` (checked there, not read before): any failure gives the reservation back.
    Errors keep the precedence of the other path: a product missing, off sale or repriced is
    named before its stock or the balance (looked up only once something failed)."""
    reservation = _reserve_or_name_the_product(lines=lines, quantities=quantities, user_id=user_id, counters=counters)
    try:
        try:
            if pay_now:
                return PlacedOrder(order=_pay_order(user_id=user_id, quantities=quantities, prices=prices,
                                                    reservation=reservation))  # fmt: skip
            return PlacedOrder(order=_accept_order(user_id=user_id, quantities=quantities, prices=prices,
                                                   reservation=reservation), status_code=202)  # fmt: skip
        except ReservationLost:  # or the fence's other half: the quoted prices no longer hold
            _prices_checked(lines, quantities)
            raise
    except BaseException:
        _release_after_failure(reservation.token)
        raise


def _record_order(
    *,
    user_id: int,
    quantities: dict[int, int],
    prices: dict[int, int],
    coupon_code: str | None,
    claim: idempotency.Claim | None,
    token: uuid.UUID,
    take_stock: Callable[[str], None],
    pay_now: bool,
    payment_attempts: int | None = None,
) -> PlacedOrder:
    """One transaction: the order, its stock, the payment (synchronously), the coupon use and
    its events. Lock order: the account row (locked by the balance's version update, retried
    while the version moves) before the coupon row (locked by its use count): the coupon's
    discount is worked out first without a lock and its use taken last, so a buyer whose balance
    keeps being retried never holds a coupon that other buyers are waiting for. Asynchronously,
    the order's INSERT wakes a settler as it commits.

    Paid now without a coupon, the paid amount is known before anything is written: the order
    is written PAID at once, with both its events, saving a status update. Nobody sees it
    before the payment commits with it; if the payment fails, none of it is written."""
    total = _total(quantities, prices)
    paid_at_once = pay_now and not coupon_code
    with transaction.atomic():
        order = _insert_order(user_id=user_id, total=total, coupon_code=coupon_code or "", token=token,
                              quantities=quantities, prices=prices, paid=paid_at_once,
                              wake_settler=not pay_now)  # fmt: skip
        reference = f"order:{order.id}"
        take_stock(reference)
        discount = coupon_discount(code=coupon_code, order_amount=total) if coupon_code else 0
        if pay_now:
            payment_take(order_id=order.id, user_id=user_id, amount=total - discount, max_attempts=payment_attempts)
        if coupon_code:
            coupon_redeem(code=coupon_code, user_id=user_id, order_amount=total, reference=reference,
                          discount=discount)  # fmt: skip
        if pay_now:
            if not paid_at_once:
                _move(order, OrderStatus.PAID, events.PAID, discount_amount=discount, paid_amount=total - discount)
            status_code = 201
        else:
            if discount:
                Order.objects.filter(pk=order.pk).update(discount_amount=discount)
                order.discount_amount = discount
            status_code = 202
        if claim:
            idempotency.record_order(claim=claim, order_id=order.id, status_code=status_code)
    return PlacedOrder(order=order, status_code=status_code)


# The order, its items and its events (items and events each passed as one JSON array: cheaper
# to send from Python than typed arrays), written only where `{condition}` holds.
_ORDER_CTES = f"""
new_order AS (
    INSERT INTO orders_order (user_id, status, total_amount, discount_amount, paid_amount, coupon_code,
                              reservation_token, created_at, updated_at)
    SELECT %(user_id)s, %(status)s, %(total)s, 0, %(paid_amount)s, %(coupon_code)s, %(stock_token)s, now(), now()
    {{condition}}
    RETURNING id, created_at
), items AS (
    INSERT INTO orders_orderitem (order_id, product_id, quantity, unit_price)
    SELECT new_order.id, item.product_id, item.quantity, item.unit_price
    FROM new_order, jsonb_to_recordset(%(items)s::jsonb) AS item(product_id bigint, quantity int, unit_price bigint)
), new_events AS ({events.insert_sql(order_id="new_order.id", source="new_order")})"""
_ORDER_REFERENCE = "'order:' || new_order.id"
_SELECT_ORDER = "\nSELECT id, created_at FROM new_order"
# An unpaid order is written only while its user has fewer than %(unpaid_cap)s unpaid ones (NULL:
# no cap), counted over the partial index orders_order_pending_by_user and never past the cap.
# Parallel orders of one user that all start under the cap may pass it together, by at most as
# many as run at once (each statement sees the others' orders only once they commit): a bound on
# abuse, not a count to the unit; purchase limits, which are, are counted in Redis.
_UNPAID_CTE = f"""unpaid AS (
    SELECT count(*) AS orders FROM (
        SELECT 1 FROM {Order._meta.db_table} WHERE user_id = %(user_id)s AND {PENDING_SQL}
        LIMIT coalesce(%(unpaid_cap)s::int, 0)
    ) AS waiting
), """
_UNDER_UNPAID_CAP = "unpaid WHERE %(unpaid_cap)s::int IS NULL OR unpaid.orders < %(unpaid_cap)s::int"
# NOTIFY wakes the settlers; it is delivered when (and only if) the order commits. A row comes
# back either way: the order's id is NULL when the cap (or the fence, FENCE) held it back.
_SELECT_ORDER_AND_WAKE_SETTLERS = f"""
SELECT new_order.id, new_order.created_at, unpaid.orders, {{fence}},
       (SELECT pg_notify('{SETTLE_CHANNEL}', '') FROM new_order)
FROM unpaid LEFT JOIN new_order ON true"""
# Inside the order's transaction (an order with a coupon or an Idempotency-Key), which records
# the sale, the coupon's use and the payment next.
_INSERT_ORDER_SQL = "WITH " + _ORDER_CTES.format(condition="") + _SELECT_ORDER
_INSERT_PENDING_ORDER_SQL = (
    "WITH "
    + _UNPAID_CTE
    + _ORDER_CTES.format(condition="FROM " + _UNDER_UNPAID_CAP)
    + _SELECT_ORDER_AND_WAKE_SETTLERS.format(fence="true")
)
# The usual order, without coupon or Idempotency-Key: one statement in autocommit (one round
# trip, its own commit), each app's part in that app's own SQL. Fenced by the stock epoch.
# Asynchronously: the order and its sale; a settler pays it later.
_ACCEPT_ORDER_SQL = (
    f"WITH fence AS ({EPOCH_AND_PRICES_FENCE_SQL}), "
    + _UNPAID_CTE
    + _ORDER_CTES.format(condition="FROM fence, " + _UNDER_UNPAID_CAP)
    + ", "
    + stock_sale_sql(source="new_order", reference=_ORDER_REFERENCE)
    + _SELECT_ORDER_AND_WAKE_SETTLERS.format(fence="EXISTS (SELECT 1 FROM fence)")
)
# Synchronously: also the payment, the balance under its version check and its ledger entry.
# Everything hangs on `changed`: if the version moved, the balance is short or the fence fails,
# nothing is written, and the first columns say which.
_PAY_ORDER_SQL = (
    f"WITH fence AS ({EPOCH_AND_PRICES_FENCE_SQL}), "
    + balance_change_ctes(guard="fence")
    + ", "
    + _ORDER_CTES.format(condition="FROM changed")
    + ", "
    + stock_sale_sql(source="new_order", reference=_ORDER_REFERENCE)
    + ", "
    + payment_insert_cte(source="new_order", order_id="new_order.id")
    + ", "
    + balance_entry_cte(source="new_order", reference=_ORDER_REFERENCE)
    + "\nSELECT current.balance, EXISTS (SELECT 1 FROM fence), new_order.id, new_order.created_at"
    + "\nFROM current LEFT JOIN new_order ON true"
)


@dataclass(frozen=True, slots=True)
class PlacedItem:
    """An item of an order just placed, as the answer and the events need it."""

    product_id: int
    quantity: int
    unit_price: int


def _new_order(
    *,
    user_id: int,
    total: int,
    coupon_code: str,
    token: uuid.UUID,
    quantities: dict[int, int],
    prices: dict[int, int],
    paid: bool,
) -> tuple[Order, dict[str, object]]:
    """The order about to be written, and its part of the statement's parameters: PENDING_PAYMENT
    with its order.created event, or (`paid`) PAID in full with order.created and order.paid."""
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
    params = {"user_id": user_id, "status": order.status, "total": total, "paid_amount": order.paid_amount,
              "coupon_code": coupon_code, "stock_token": token, "items": items_json,
              "events": events.as_json(to_write)}  # fmt: skip
    return order, params


def _written(order: Order, row: tuple) -> Order:
    order.id, order.created_at = row[0], row[1]
    order.updated_at = order.created_at
    return order


def _insert_order(
    *,
    user_id: int,
    total: int,
    coupon_code: str,
    token: uuid.UUID,
    quantities: dict[int, int],
    prices: dict[int, int],
    paid: bool,
    wake_settler: bool,
) -> Order:
    """Inside the order's transaction: the order (see _new_order). `wake_settler`: it waits
    for a settler, and is refused (TooManyUnpaidOrders) if its user has too many waiting."""
    order, params = _new_order(user_id=user_id, total=total, coupon_code=coupon_code, token=token,
                               quantities=quantities, prices=prices, paid=paid)  # fmt: skip
    if not wake_settler:
        return _written(order, sql_one(_INSERT_ORDER_SQL, params))
    params.update(_unpaid_params())
    order_id, created_at, unpaid, _fence_holds, _ = sql_one(_INSERT_PENDING_ORDER_SQL, params)
    if order_id is None:
        raise TooManyUnpaidOrders(details={"limit": params["unpaid_cap"], "unpaid": unpaid})
    return _written(order, (order_id, created_at))


def _unpaid_params() -> dict[str, object]:
    return {"unpaid_cap": unpaid_orders_cap()}


def _accept_order(
    *, user_id: int, quantities: dict[int, int], prices: dict[int, int], reservation: Reservation
) -> Order:
    """An asynchronous order without coupon or Idempotency-Key, and its sale, in one statement
    committed on its own: a settler pays it later. All of it is written, or none (ReservationLost
    if the sale cannot be recorded, TooManyUnpaidOrders if its user has too many waiting)."""
    total = _total(quantities, prices)
    order, params = _new_order(user_id=user_id, total=total, coupon_code="", token=reservation.token,
                               quantities=quantities, prices=prices, paid=False)  # fmt: skip
    params.update(stock_sale_params(reservation=reservation, quantities=quantities))
    params.update(quoted_prices_params(prices=prices))
    params.update(_unpaid_params())
    order_id, created_at, unpaid, fence_holds, _ = _run_fenced(_ACCEPT_ORDER_SQL, params)
    if not fence_holds:  # the stock epoch moved on (Redis lost the reservation and stock was
        raise ReservationLost()  # rebuilt), or the quoted prices no longer hold
    if order_id is None:
        raise TooManyUnpaidOrders(details={"limit": params["unpaid_cap"], "unpaid": unpaid})
    return _written(order, (order_id, created_at))


def _pay_order(*, user_id: int, quantities: dict[int, int], prices: dict[int, int], reservation: Reservation) -> Order:
    """A synchronous order without coupon or Idempotency-Key: the order PAID, its sale, its
    payment and the balance change in one statement committed on its own. A balance version
    that moved meanwhile writes nothing and is retried (bounded, jittered, counted).

    Raises InsufficientBalance, ReservationLost, BalanceConflict."""
    total = _total(quantities, prices)
    order, params = _new_order(user_id=user_id, total=total, coupon_code="", token=reservation.token,
                               quantities=quantities, prices=prices, paid=True)  # fmt: skip
    params.update(stock_sale_params(reservation=reservation, quantities=quantities))
    params.update(quoted_prices_params(prices=prices))
    params.update(payment_params(user_id=user_id, amount=total))
    params.update(balance_params(user_id=user_id, amount=-total, kind=BalanceEntry.Kind.PAYMENT))

    def attempt_once() -> Order | None:
        row = _run_fenced(_PAY_ORDER_SQL, params)
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


def _run_fenced(sql: str, params: dict[str, object]) -> tuple | None:
    try:
        return sql_one(sql, params)
    except IntegrityError as exc:  # reconciliation released the reservation first
        raise ReservationLost() from exc


def _release_after_failure(token) -> None:
    """Give the reservation back; if Redis is unreachable now, reconciliation will."""
    try:
        stock_release(token=token)
    except Exception:
        logger.warning("could not release reservation %s; reconciliation will", token, exc_info=True)


# The status change and its events in one statement: no change without its event, and the
# compare-and-set on the current status makes a concurrent move lose cleanly.
_MOVE_SQL = f"""
WITH moved AS (
    UPDATE orders_order SET status = %(to_status)s, updated_at = now(){{assignments}}
    WHERE id = %(order_id)s AND status = %(from_status)s
    RETURNING id
){events.insert_sql(order_id="moved.id", source="moved")}"""
_MOVABLE_FIELDS = ("discount_amount", "paid_amount")


def _move(order: Order, to_status: str, event_type: str, **fields) -> None:
    """Move along the status machine and write the move's event."""
    if to_status not in ALLOWED_TRANSITIONS[order.status]:
        raise InvalidStatusTransition(details={"from": order.status, "to": to_status})
    # Names go into the SQL text: a check that `python -O` would strip (an assert) is not one.
    unknown = set(fields) - set(_MOVABLE_FIELDS)
    if unknown:
        raise ValueError(f"not a field a status move sets: {sorted(unknown)}")
    from_status = order.status
    order.status = to_status
    for name, value in fields.items():
        setattr(order, name, value)
    event = events.event_build(order, event_type, previous_status=from_status)
    sql = _MOVE_SQL.format(assignments="".join(f", {name} = %({name})s" for name in fields))
    events_written = sql_execute(sql, {
        "to_status": to_status, "from_status": from_status, "order_id": order.id, **fields,
        "events": events.as_json([event]),
    })  # fmt: skip
    if events_written != 1:  # the status was no longer from_status: nothing moved
        order.status = from_status
        raise InvalidStatusTransition(details={"from": from_status, "to": to_status, "reason": "changed concurrently"})


def _lock_order(order_id: int, *, user_id: int | None = None, skip_locked: bool = False) -> Order | None:
    """The order row locked for this transaction, with its items (None: missing, or locked
    by another transaction when `skip_locked`)."""
    queryset = Order.objects.select_for_update(skip_locked=skip_locked).filter(pk=order_id)
    if user_id is not None:
        queryset = queryset.filter(user_id=user_id)
    order = queryset.first()
    if order is not None:
        order.items_cache = list(order.items.order_by("id"))
    return order


def _give_back(order: Order, *, to_status: str, event_type: str) -> None:
    """Refund (if paid), release the coupon use and the stock, and move to `to_status`.
    Inside the caller's transaction, the order row locked."""
    reference = f"order:{order.id}"
    if order.status == OrderStatus.PAID:
        payment_refund(order_id=order.id)
    if order.coupon_code:
        coupon_release(reference=reference)
    stock_return(quantities={item.product_id: item.quantity for item in order.items_cache}, reference=reference,
                 holder=order.user_id)  # fmt: skip
    _move(order, to_status, event_type)


def order_cancel(*, order_id: int, user_id: int) -> Order:
    """The buyer cancels an order: refund its payment, give the coupon use and the stock (and
    with it the purchase-limit allowance) back. A paid order only within
    ORDER_CANCEL_WINDOW_SECONDS of being placed: a flash sale's stock is not a free option.

    The order row is locked for the cancellation, so two cancels cannot both refund; refund,
    coupon release, the stock ledger and the event commit together, and Redis gets the units
    after the commit (a crash in between leaves Redis short until reconciliation adds them
    back). Raises NOT_FOUND, INVALID_STATUS or CANCEL_WINDOW_CLOSED.
    """
    with transaction.atomic():
        order = _lock_order(order_id, user_id=user_id)
        if order is None:
            raise OrderNotFound()
        if OrderStatus.CANCELLED not in ALLOWED_TRANSITIONS[order.status]:
            raise InvalidStatusTransition(details={"from": order.status, "to": OrderStatus.CANCELLED})
        _check_cancel_window(order)
        _give_back(order, to_status=OrderStatus.CANCELLED, event_type=events.CANCELLED)
    return order


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
            order = _lock_order(order_id, skip_locked=True)
            if order is None or order.status != OrderStatus.PENDING_PAYMENT:
                continue
            _give_back(order, to_status=OrderStatus.CANCELLED, event_type=events.CANCELLED)
            expired.append(order_id)
    if expired:
        logger.warning("cancelled %d orders left unpaid past %ss", len(expired), timeout)
    return expired
