"""The status machine, public for everything in orders that moves an order (the service's
cancel and expiry, the settlement): a move and its event in one statement, and the giving back
of what an order held."""

from __future__ import annotations

from coupons.services import coupon_release
from inventory.services import stock_return
from kernel.database import sql_execute
from orders import events
from orders.errors import InvalidStatusTransition
from orders.models import ALLOWED_TRANSITIONS, Order, OrderStatus, PlacedItem
from orders.queries import MOVABLE_FIELDS, MOVES, Move, MovedAmounts, NewEvents
from payments.references import order_reference
from payments.services import payment_refund


def order_move(order: Order, to_status: str, event_type: str, **fields) -> None:
    """Move along the status machine and write the move's event, setting `fields` (of
    MOVABLE_FIELDS) too. Raises InvalidStatusTransition, also when the status changed
    concurrently (the statement's compare-and-set matched nothing: nothing moved)."""
    if to_status not in ALLOWED_TRANSITIONS[order.status]:
        raise InvalidStatusTransition(details={"from": order.status, "to": to_status})
    # Names choose the statement: a check that `python -O` would strip (an assert) is not one.
    unknown = set(fields) - set(MOVABLE_FIELDS)
    if unknown:
        raise ValueError(f"not a field a status move sets: {sorted(unknown)}")
    from_status = order.status
    order.status = to_status
    for name, value in fields.items():
        setattr(order, name, value)
    event = events.event_build(order, event_type, previous_status=from_status)
    statement = MOVES[tuple(name for name in MOVABLE_FIELDS if name in fields)]
    params = statement.bind(
        Move(order_id=order.id, from_status=from_status, to_status=to_status),
        MovedAmounts(**fields),
        NewEvents(events=events.as_json([event])),
    )
    if sql_execute(statement.text, params) != 1:  # the status was no longer from_status: nothing moved
        order.status = from_status
        raise InvalidStatusTransition(details={"from": from_status, "to": to_status, "reason": "changed concurrently"})


def order_lock(order_id: int, *, user_id: int | None = None, skip_locked: bool = False) -> Order | None:
    """The order row locked for this transaction, with its items (None: missing, or locked
    by another transaction when `skip_locked`)."""
    queryset = Order.objects.select_for_update(skip_locked=skip_locked).filter(pk=order_id)
    if user_id is not None:
        queryset = queryset.filter(user_id=user_id)
    order = queryset.first()
    if order is not None:
        PlacedItem.attach([order])
    return order


def order_give_back(order: Order, *, to_status: str, event_type: str) -> None:
    """Refund (if paid), release the coupon use and the stock, and move to `to_status`.
    Inside the caller's transaction, the order row locked."""
    reference = order_reference(order.id)
    if order.status == OrderStatus.PAID:
        payment_refund(order_id=order.id)
    if order.coupon_code:
        coupon_release(reference=reference)
    stock_return(quantities={item.product_id: item.quantity for item in order.items_cache}, reference=reference,
                 holder=order.user_id)  # fmt: skip
    order_move(order, to_status, event_type)
