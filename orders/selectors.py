from django.db.models import Prefetch, QuerySet

from orders.errors import OrderNotFound
from orders.models import Order, OrderEvent, OrderItem


def _with_items(queryset: QuerySet[Order]) -> QuerySet[Order]:
    return queryset.prefetch_related(
        Prefetch("items", queryset=OrderItem.objects.order_by("id"), to_attr="items_cache")
    )


def order_get(*, order_id: int, user_id: int) -> Order:
    """One order with its items and its progress (its events, oldest first)."""
    events = Prefetch("events", queryset=OrderEvent.objects.order_by("id"), to_attr="events_cache")
    order = _with_items(Order.objects.filter(pk=order_id, user_id=user_id)).prefetch_related(events).first()
    if order is None:
        raise OrderNotFound()
    return order


def order_list(*, user_id: int) -> QuerySet[Order]:
    return _with_items(Order.objects.filter(user_id=user_id).order_by("-id"))
