"""Order events: the outbox (written with each status change) and its relay to a Redis Stream.

The stream `orders:events` is the broker already in the stack. A Kafka topic would replace it
one for one: the relay would produce to a topic keyed by order id (per-order order, as here),
consumers would be a consumer group committing offsets after their idempotent update.
"""

from __future__ import annotations

import datetime
import logging
import time
from dataclasses import dataclass

import orjson
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from django_redis import get_redis_connection

from kernel.database import AdvisoryLock, sql_execute, sql_one
from kernel.retention import Batch, Progress, TrimResult, trim_in_batches
from orders.models import Order, OrderEvent
from orders.queries import EVENTS_RECORD, EventsOf, NewEvents

logger = logging.getLogger(__name__)

STREAM_KEY = "orders:events"

CREATED = "order.created"
PAYMENT_STARTED = "order.payment_started"
PAID = "order.paid"
PAYMENT_FAILED = "order.payment_failed"
CANCELLED = "order.cancelled"


def _payload(order: Order, previous_status: str | None) -> dict:
    return {
        "status": order.status,
        "previousStatus": previous_status,
        "userId": order.user_id,
        "totalAmount": order.total_amount,
        "paidAmount": order.paid_amount,
        "items": [{"productId": i.product_id, "quantity": i.quantity} for i in order.items_cache],
    }


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event about to be written; the database gives it its event_id and time."""

    order_id: int | None  # None: written with its order, which has no id yet
    type: str
    payload: dict


def event_build(order: Order, event_type: str, *, previous_status: str | None = None) -> NewEvent:
    return NewEvent(order_id=order.id, type=event_type, payload=_payload(order, previous_status))


def as_json(events: list[NewEvent]) -> str:
    """Events as one JSON array, for orders.queries.events_insert (NewEvents)."""
    return orjson.dumps(
        [{"orderId": event.order_id, "type": event.type, "payload": event.payload} for event in events]
    ).decode()


def events_record(events: list[NewEvent]) -> None:
    """Events that come with no status change (created, payment started), all of one order,
    inside the transaction of what they describe."""
    params = EVENTS_RECORD.bind(EventsOf(order_id=events[0].order_id), NewEvents(events=as_json(events)))
    sql_execute(EVENTS_RECORD.text, params)


def events_relay(*, batch_size: int = 500) -> int:
    """Publish unpublished events in id order, then mark them. Returns how many were published.

    One relay at a time (advisory lock), so events of one order, which their transactions
    commit in order, reach the stream in that order. A crash after XADD and before the mark
    publishes them again next time: at least once.
    """
    published = 0
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [AdvisoryLock.EVENT_RELAY])
            if not cursor.fetchone()[0]:
                return 0
        events = list(OrderEvent.objects.filter(published_at__isnull=True).order_by("id")[:batch_size])
        if not events:
            return 0
        pipe = get_redis_connection("default").pipeline(transaction=False)
        for event in events:
            pipe.xadd(
                STREAM_KEY, _stream_fields(event), maxlen=settings.ORDER_EVENTS_STREAM_MAX_LENGTH, approximate=True
            )
        pipe.execute()
        OrderEvent.objects.filter(id__in=[e.id for e in events]).update(published_at=timezone.now())
        published = len(events)
    return published


def _stream_fields(event: OrderEvent) -> dict[str, str]:
    return {
        "eventId": str(event.event_id),
        "type": event.type,
        "orderId": str(event.order_id),
        "createdAt": event.created_at.isoformat(),
        "payload": orjson.dumps(event.payload).decode(),
    }


# --- Retention (docs/retention.md) -----------------------------------------------------------

# One batch: the next `batch_size` events by id after %(after)s, and of those the published ones
# older than the cutoff deleted. Walking the primary key needs no index on the times, and ids
# follow creation, so the walk stops at the first batch that reaches an event newer than the
# cutoff. Unpublished events are stepped over, never deleted: the relay has yet to send them.
_TRIM_EVENTS_SQL = """
WITH batch AS (
    SELECT id, created_at FROM orders_orderevent WHERE id > %(after)s ORDER BY id LIMIT %(batch_size)s
), gone AS (
    DELETE FROM orders_orderevent AS event USING batch
    WHERE event.id = batch.id AND event.published_at IS NOT NULL AND event.created_at < %(cutoff)s
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone) AS deleted,
       (SELECT max(id) FROM batch) AS last_id,
       (SELECT bool_and(created_at < %(cutoff)s) FROM batch) AS all_old,
       (SELECT count(*) FROM batch) AS seen
"""


def events_trim(
    *, batch_size: int | None = None, time_budget_seconds: float | None = None, progress: Progress | None = None
) -> TrimResult:
    """Delete published events older than ORDER_EVENTS_RETENTION_DAYS, a batch per statement.

    Safe at any time: an event is deleted only once the relay has marked it published, and the
    relay selects only unpublished ones. Consumers read the stream, not this table."""
    cutoff = timezone.now() - datetime.timedelta(days=settings.ORDER_EVENTS_RETENTION_DAYS)
    after = 0

    def delete_batch(size: int) -> Batch:
        nonlocal after
        deleted, last_id, all_old, seen = sql_one(
            _TRIM_EVENTS_SQL, {"after": after, "batch_size": size, "cutoff": cutoff}
        )
        if last_id is not None:
            after = last_id
        return Batch(deleted=deleted, more=seen == size and bool(all_old))

    return trim_in_batches(
        "order events", delete_batch, batch_size=batch_size, time_budget_seconds=time_budget_seconds,
        progress=progress,
    )  # fmt: skip


def stream_trim(
    *, batch_size: int | None = None, time_budget_seconds: float | None = None, progress: Progress | None = None
) -> TrimResult:
    """Drop stream entries older than ORDER_EVENTS_STREAM_RETENTION_HOURS (their ids are the
    time they were published). Approximate trimming removes whole nodes of the stream, at most
    `batch_size` entries a command, so Redis never stalls on it; a few entries past the cutoff
    may stay until the next run."""
    cutoff_ms = int((time.time() - settings.ORDER_EVENTS_STREAM_RETENTION_HOURS * 3600) * 1000)
    client = get_redis_connection("default")

    def delete_batch(size: int) -> Batch:
        deleted = client.xtrim(STREAM_KEY, minid=cutoff_ms, approximate=True, limit=size)
        return Batch(deleted=deleted, more=deleted > 0)

    return trim_in_batches(
        "order events stream", delete_batch, batch_size=batch_size, time_budget_seconds=time_budget_seconds,
        progress=progress,
    )  # fmt: skip
