"""Celery beat's periodic jobs of the order flow. Each is a thin shell around a service.
(Payments are not tasks: settlers pay orders in batches, orders/settlement.py.)"""

from celery import shared_task

from orders import idempotency
from orders.events import events_relay, events_trim, stream_trim
from orders.services import orders_expire_pending


@shared_task
def expire_pending_orders() -> int:
    return len(orders_expire_pending())


@shared_task
def purge_idempotency_keys() -> int:
    return idempotency.purge_expired().deleted


@shared_task
def trim_order_events() -> int:
    return events_trim().deleted + stream_trim().deleted


@shared_task
def relay_order_events() -> int:
    published = 0
    while batch := events_relay():
        published += batch
    return published
