from django.db.models import Prefetch, QuerySet

from orders.errors import OrderNotFound
from orders.models import Order, OrderEvent, PlacedItem


def order_get(*, order_id: int, user_id: int) -> Order:
    """One order with its items and its progress (its events, oldest first)."""
    events = Prefetch("events", queryset=OrderEvent.objects.order_by("id"), to_attr="events_cache")
    order = Order.objects.filter(pk=order_id, user_id=user_id).prefetch_related(events).first()
    if order is None:
        raise OrderNotFound()
    PlacedItem.attach([order])
    return order


def order_list(*, user_id: int) -> QuerySet[Order]:
    """The user's orders, newest first, without their items: page it, then orders_with_items."""
    return Order.objects.filter(user_id=user_id).order_by("-id")


def orders_with_items(orders: list[Order]) -> list[Order]:
    """`orders` (a page of order_list) with their items, in one query."""
    orders = list(orders)
    PlacedItem.attach(orders)
    return orders
