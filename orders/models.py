from __future__ import annotations

import uuid
from dataclasses import dataclass

from django.conf import settings
from django.db import models


class OrderStatus(models.TextChoices):
    PENDING_PAYMENT = "PENDING_PAYMENT", "Pending payment"
    PAID = "PAID", "Paid"
    PAYMENT_FAILED = "PAYMENT_FAILED", "Payment failed"
    CANCELLED = "CANCELLED", "Cancelled"


# The status machine: the only moves an order may make.
# The partial indexes' condition (orders_order_pending, orders_order_pending_by_user) as SQL
# text. A statement must name the status literally for a generic plan (a prepared statement's,
# which cannot see a parameter's value) to use them: with `status = $1`, the oldest unpaid
# order was found by walking every order by id, 157 ms at a million past orders.
PENDING_SQL = f"status = '{OrderStatus.PENDING_PAYMENT.value}'"

ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    OrderStatus.PENDING_PAYMENT: frozenset({OrderStatus.PAID, OrderStatus.PAYMENT_FAILED, OrderStatus.CANCELLED}),
    OrderStatus.PAID: frozenset({OrderStatus.CANCELLED}),
    OrderStatus.PAYMENT_FAILED: frozenset({OrderStatus.CANCELLED}),
    OrderStatus.CANCELLED: frozenset(),
}


class Order(models.Model):
    # db_index=False here and below: a composite index leading with the column serves its lookups.
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="orders", db_index=False)
    status = models.CharField(max_length=16, choices=OrderStatus.choices, default=OrderStatus.PENDING_PAYMENT)
    total_amount = models.BigIntegerField()
    discount_amount = models.BigIntegerField(default=0)
    paid_amount = models.BigIntegerField(default=0)
    coupon_code = models.CharField(max_length=64, blank=True)
    reservation_token = models.UUIDField(unique=True, help_text="The stock reservation this order holds.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            models.Index(fields=["user", "-id"]),
            # The settlers' queue: only the unpaid orders, oldest first (orders/settlement.py).
            models.Index(
                fields=["id"], condition=models.Q(status=OrderStatus.PENDING_PAYMENT), name="orders_order_pending"
            ),
            # One user's unpaid orders, counted against ORDER_UNPAID_LIMIT_PER_USER (orders/services.py).
            models.Index(
                fields=["user"],
                condition=models.Q(status=OrderStatus.PENDING_PAYMENT),
                name="orders_order_pending_by_user",
            ),
        ]

    def __str__(self) -> str:
        return f"order {self.pk} ({self.status})"


class OrderItem(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="items", db_index=False)
    product = models.ForeignKey("inventory.Product", on_delete=models.PROTECT, related_name="+")
    quantity = models.PositiveIntegerField()
    unit_price = models.BigIntegerField(help_text="The price at order time, in minor units.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["order", "product"], name="order_item_product_once")]

    def __str__(self) -> str:
        return f"{self.quantity} x product {self.product_id}"


@dataclass(frozen=True, slots=True)
class PlacedItem:
    """An order's item as `order.items_cache` holds it wherever an order is written (placed,
    replayed, locked to move, settled): the answer and the events read these three fields."""

    product_id: int
    quantity: int
    unit_price: int

    @classmethod
    def attach(cls, orders: list[Order]) -> None:
        """Set each order's `items_cache`: its items as written, in the order written, for all
        the orders in one query (the settler's batch, a page of the order list, one order)."""
        by_order: dict[int, list[PlacedItem]] = {order.pk: [] for order in orders}
        rows = OrderItem.objects.filter(order_id__in=list(by_order)).order_by("id")
        for order_id, *item in rows.values_list("order_id", "product_id", "quantity", "unit_price"):
            by_order[order_id].append(cls(*item))
        for order in orders:
            order.items_cache = by_order[order.pk]


class IdempotencyRecord(models.Model):
    """The first answer to an Idempotency-Key, replayed to every retry with the same key."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", db_index=False)
    key = models.CharField(max_length=255)
    request_fingerprint = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField()
    response_body = models.JSONField()
    order_id = models.BigIntegerField(null=True, blank=True)
    # The request that holds the key in progress (new on each take-over); only it records the answer.
    owner = models.UUIDField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="idempotency_key_per_user")]

    def __str__(self) -> str:
        return f"{self.key} -> {self.status_code}"


class OrderEvent(models.Model):
    """Outbox: one row per order status change, written in the same transaction as the change.

    The relay publishes unpublished rows to a Redis Stream and then marks them; a crash in
    between publishes them again (at least once), so consumers deduplicate by `event_id`.
    """

    event_id = models.UUIDField(unique=True, default=uuid.uuid4, editable=False)
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="events", db_index=False)
    type = models.CharField(max_length=32)
    payload = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)
    published_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["id"], condition=models.Q(published_at__isnull=True), name="orderevent_unpublished"),
            models.Index(fields=["order", "id"]),
        ]

    def __str__(self) -> str:
        return f"{self.type} of order {self.order_id}"


class IntakeGeneration(models.Model):
    """One life of the intake's data in Redis (orders/intake.py), as the settlers last saw it:
    how many orders it had accepted and how many were drained. When Redis comes back empty, a
    new generation begins, and the old one's accepted less drained are the orders lost with it
    (at least: those accepted after the last look are not known), counted once."""

    generation = models.CharField(max_length=32, primary_key=True)
    accepted = models.BigIntegerField(default=0)
    drained = models.BigIntegerField(default=0)
    seen_at = models.DateTimeField(auto_now=True)
    lost = models.BigIntegerField(null=True, blank=True, help_text="Set once Redis was found to have lost it.")

    def __str__(self) -> str:
        return f"intake {self.generation}"
