"""Placing and cancelling orders: the one place that calls inventory, coupons and payments."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from django.conf import settings
from django.db import transaction

from coupons.services import coupon_redeem, coupon_release
from inventory.legacy import product_locks, stock_take_locked
from inventory.services import (
    products_for_order,
    stock_record_sale,
    stock_release,
    stock_reserve,
    stock_return,
)
from orders import idempotency
from orders.errors import InvalidStatusTransition, OrderNotFound, PriceChanged
from orders.models import ALLOWED_TRANSITIONS, Order, OrderItem, OrderStatus
from payments.services import payment_refund, payment_take

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
) -> PlacedOrder:
    """Reserve stock, record the order, redeem the coupon and pay, all or nothing.

    Stock is reserved in Redis first (no database lock on products), then one transaction
    writes the order, the stock sale, the coupon use and the payment. Any failure after the
    reservation gives the stock back before the error reaches the client; a crash leaves the
    reservation to reconciliation. (ORDER_STRATEGY=old takes the report's path instead: product
    locks around a database decrement, no balance retry, LOCK_TIMEOUT.)
    Raises NOT_FOUND, PRODUCT_UNAVAILABLE, PRICE_CHANGED, OUT_OF_STOCK, COUPON_INVALID,
    INSUFFICIENT_BALANCE, CONFLICT, SERVICE_UNAVAILABLE.
    """
    if idempotency_key:
        earlier = idempotency.find(user_id=user_id, key=idempotency_key, fingerprint=fingerprint)
        if earlier is not None:
            return earlier
    try:
        return _place(user_id=user_id, lines=lines, coupon_code=coupon_code, idempotency_key=idempotency_key,
                      fingerprint=fingerprint)  # fmt: skip
    except idempotency.KeyTakenConcurrently:
        return idempotency.find(user_id=user_id, key=idempotency_key, fingerprint=fingerprint)
    except idempotency.REMEMBERED_ERRORS as error:
        if idempotency_key:
            idempotency.remember_error(user_id=user_id, key=idempotency_key, fingerprint=fingerprint, error=error)
        raise


def _place(
    *, user_id: int, lines: list[OrderLine], coupon_code: str | None, idempotency_key: str | None, fingerprint: str
) -> PlacedOrder:
    quantities = _quantities(lines)
    products = products_for_order(product_ids=list(quantities))
    prices = {pid: product.price for pid, product in products.items()}
    _check_prices(lines, prices)
    record = partial(
        _record_paid_order,
        user_id=user_id,
        quantities=quantities,
        prices=prices,
        coupon_code=coupon_code,
        idempotency_key=idempotency_key,
        fingerprint=fingerprint,
    )
    if settings.ORDER_STRATEGY == "old":
        with product_locks(list(quantities)):
            return record(
                token=uuid.uuid4(),
                take_stock=lambda reference: stock_take_locked(quantities=quantities, reference=reference),
                payment_attempts=1,
            )

    token = stock_reserve(quantities=quantities)
    try:
        return record(
            token=token,
            take_stock=lambda reference: stock_record_sale(token=token, quantities=quantities, reference=reference),
        )
    except BaseException:
        _release_after_failure(token)
        raise


def _record_paid_order(
    *,
    user_id: int,
    quantities: dict[int, int],
    prices: dict[int, int],
    coupon_code: str | None,
    idempotency_key: str | None,
    fingerprint: str,
    token: uuid.UUID,
    take_stock: Callable[[str], None],
    payment_attempts: int | None = None,
) -> PlacedOrder:
    """One transaction: the order, its stock, the coupon use, the payment. Balance goes last,
    so the account row (locked by its version update) is held for the shortest time."""
    total = sum(prices[pid] * qty for pid, qty in quantities.items())
    with transaction.atomic():
        order = Order.objects.create(
            user_id=user_id, total_amount=total, coupon_code=coupon_code or "", reservation_token=token
        )
        order.items_cache = OrderItem.objects.bulk_create(
            OrderItem(order=order, product_id=pid, quantity=qty, unit_price=prices[pid])
            for pid, qty in quantities.items()
        )
        reference = f"order:{order.id}"
        take_stock(reference)
        discount = 0
        if coupon_code:
            discount = coupon_redeem(
                code=coupon_code, user_id=user_id, order_amount=total, reference=reference
            ).discount
        payment_take(order_id=order.id, user_id=user_id, amount=total - discount, max_attempts=payment_attempts)
        _move(order, OrderStatus.PAID, discount_amount=discount, paid_amount=total - discount)
        if idempotency_key:
            idempotency.claim(user_id=user_id, key=idempotency_key, fingerprint=fingerprint, order_id=order.id)
    return PlacedOrder(order=order)


def _release_after_failure(token) -> None:
    """Give the reservation back; if Redis is unreachable now, reconciliation will."""
    try:
        stock_release(token=token)
    except Exception:
        logger.warning("could not release reservation %s; reconciliation will", token, exc_info=True)


def _move(order: Order, to_status: str, **fields) -> None:
    """Change status along the status machine, compare-and-set on the status we hold."""
    if to_status not in ALLOWED_TRANSITIONS[order.status]:
        raise InvalidStatusTransition(details={"from": order.status, "to": to_status})
    moved = Order.objects.filter(pk=order.pk, status=order.status).update(status=to_status, **fields)
    if not moved:
        raise InvalidStatusTransition(details={"from": order.status, "to": to_status, "reason": "changed concurrently"})
    order.status = to_status
    for name, value in fields.items():
        setattr(order, name, value)


def order_cancel(*, order_id: int, user_id: int) -> Order:
    """Cancel an order: refund its payment, give the coupon use and the stock back.

    The order row is locked for the cancellation, so two cancels cannot both refund; refund,
    coupon release and the stock ledger commit together, and Redis gets the units after the
    commit (a crash in between leaves Redis short until reconciliation adds them back).
    Raises NOT_FOUND or INVALID_STATUS.
    """
    with transaction.atomic():
        order = Order.objects.select_for_update().filter(pk=order_id, user_id=user_id).first()
        if order is None:
            raise OrderNotFound()
        if OrderStatus.CANCELLED not in ALLOWED_TRANSITIONS[order.status]:
            raise InvalidStatusTransition(details={"from": order.status, "to": OrderStatus.CANCELLED})
        reference = f"order:{order.id}"
        if order.status == OrderStatus.PAID:
            payment_refund(order_id=order.id)
        if order.coupon_code:
            coupon_release(reference=reference)
        items = list(order.items.all())
        stock_return(quantities={item.product_id: item.quantity for item in items}, reference=reference)
        _move(order, OrderStatus.CANCELLED)
    order.items_cache = items
    return order
