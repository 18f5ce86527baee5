from django.db.models import Prefetch, QuerySet

from orders import intake
from orders.errors import OrderNotFound
from orders.models import Order, OrderEvent, PlacedItem


def order_get(*, order_id: int, user_id: int) -> Order:
    """One order with its items and its progress (its events, oldest first), from the moment of
    its 202: an order the intake holds and no settler has written yet comes from Redis.

    The database, then Redis, then the database again: an order drained between the first two
    looks (written, then dropped from Redis) is found by the third."""
    order = _order_in_database(order_id=order_id, user_id=user_id)
    if order is None:
        accepted = intake.accepted_order(order_id=order_id)
        if accepted is not None and accepted.user_id == user_id:
            return accepted.as_order()
        order = _order_in_database(order_id=order_id, user_id=user_id)
    if order is None:
        raise OrderNotFound()
    return order


def _order_in_database(*, order_id: int, user_id: int) -> Order | None:
    events = Prefetch("events", queryset=OrderEvent.objects.order_by("id"), to_attr="events_cache")
    order = Order.objects.filter(pk=order_id, user_id=user_id).prefetch_related(events).first()
    if order is not None:
        PlacedItem.attach([order])
    return order


def order_list(*, user_id: int) -> QuerySet[Order]:
    """The user's orders in the database, newest first, without their items: page it, then
    orders_with_items."""
    return Order.objects.filter(user_id=user_id).order_by("-id")


def orders_with_items(orders: list[Order], *, user_id: int | None = None) -> list[Order]:
    """`orders` (a page of order_list) with their items, in one query; given the `user_id` of a
    first page, the user's orders the intake holds and no settler has written yet come first."""
    orders = list(orders)
    PlacedItem.attach(orders)
    if user_id is None:
        return orders
    written = {order.id for order in orders}
    waiting = [a.as_order() for a in intake.accepted_orders_of(user_id=user_id) if a.order_id not in written]
    return waiting + orders
