"""Celery tasks of the order flow. Each is a thin shell around a service."""

from celery import shared_task
from django.db import OperationalError

from accounts.errors import BalanceConflict
from orders import idempotency
from orders.events import events_relay
from orders.services import order_pay, orders_expire_pending


@shared_task(
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(BalanceConflict, OperationalError),
    retry_backoff=True,
    retry_jitter=True,
    max_retries=10,
)
def pay_order(order_id: int) -> str | None:
    """Acknowledged only when done: a worker killed mid-payment leaves it to another worker,
    and `order_pay` charges at most once however often it runs."""
    order = order_pay(order_id=order_id)
    return order.status if order else None


@shared_task
def expire_pending_orders() -> int:
    return len(orders_expire_pending())


@shared_task
def purge_idempotency_keys() -> int:
    return idempotency.purge_expired()


@shared_task
def relay_order_events() -> int:
    published = 0
    while batch := events_relay():
        published += batch
    return published
