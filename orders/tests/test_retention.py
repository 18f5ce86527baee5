"""Retention of what grows with every order (docs/retention.md): the outbox, the stream and the
idempotency keys are trimmed in batches, and what must stay stays."""

from __future__ import annotations

import datetime
import io

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.utils import timezone

from config.celery import app as celery_app
from devtools.testing import make_product, make_user
from inventory import redis_counts
from orders import events, idempotency
from orders.models import IdempotencyRecord, OrderEvent
from orders.services import OrderLine, order_place

pytestmark = pytest.mark.django_db(transaction=True)


def days_ago(days: float) -> datetime.datetime:
    return timezone.now() - datetime.timedelta(days=days)


def event_ids_of(order_ids: list[int]) -> set[int]:
    return set(OrderEvent.objects.filter(order_id__in=order_ids).values_list("id", flat=True))


def test_published_events_past_retention_go_in_batches_and_unpublished_and_recent_ones_stay(settings):
    settings.ORDER_EVENTS_RETENTION_DAYS = 7
    user = make_user(balance=10_000)
    product = make_product(price=1, stock_quantity=100)
    orders = [order_place(user_id=user.id, lines=[OrderLine(product.id, 1, 1)]).order.id for _ in range(5)]
    while events.events_relay():
        pass
    stuck, old, recent = orders[:1], orders[1:4], orders[4:]
    # The oldest order's events never made it out (a relay backlog): old, but not yet published.
    OrderEvent.objects.filter(order_id__in=stuck).update(published_at=None)
    OrderEvent.objects.filter(order_id__in=stuck + old).update(created_at=days_ago(8))
    OrderEvent.objects.filter(order_id__in=recent).update(created_at=days_ago(6))
    expected_gone = event_ids_of(old)
    kept = event_ids_of(stuck + recent)

    result = events.events_trim(batch_size=2)

    assert result.deleted == len(expected_gone) and result.finished
    assert result.batches >= len(expected_gone) // 2
    assert set(OrderEvent.objects.values_list("id", flat=True)) == kept
    assert events.events_relay() == len(event_ids_of(stuck))  # the backlog is still sent


def test_stream_entries_older_than_its_retention_are_trimmed_a_batch_at_a_time(settings):
    settings.ORDER_EVENTS_STREAM_RETENTION_HOURS = 24
    client = redis_counts.redis_client()
    for i in range(350):  # published in 1970: ids are publishing times
        client.xadd(events.STREAM_KEY, {"n": i}, id=f"{1000 + i}-0")
    recent = [client.xadd(events.STREAM_KEY, {"n": "new"}) for _ in range(5)]

    result = events.stream_trim(batch_size=100)

    left = [entry_id for entry_id, _ in client.xrange(events.STREAM_KEY)]
    assert left[-5:] == recent  # every recent entry stays
    old_left = len(left) - 5
    assert old_left < 100  # at most the part of one node of the stream that holds recent entries too
    assert result.deleted == 350 - old_left and result.batches >= 3 and result.finished


def remembered_key(user, key: str, *, created_at: datetime.datetime) -> IdempotencyRecord:
    record = IdempotencyRecord.objects.create(
        user=user, key=key, request_fingerprint="f", status_code=201, response_body={}
    )
    IdempotencyRecord.objects.filter(pk=record.pk).update(created_at=created_at)
    return record


def test_idempotency_keys_past_their_ttl_are_purged_in_batches_and_younger_ones_replay(settings):
    settings.IDEMPOTENCY_KEY_TTL_HOURS = 48
    user = make_user()
    for n in range(7):
        remembered_key(user, f"old-{n}", created_at=timezone.now() - datetime.timedelta(hours=49))
    young = {remembered_key(user, f"young-{n}", created_at=timezone.now() - datetime.timedelta(hours=47)).pk
             for n in range(2)}  # fmt: skip

    result = idempotency.purge_expired(batch_size=3)

    assert (result.deleted, result.batches, result.finished) == (7, 3, True)
    assert set(IdempotencyRecord.objects.values_list("pk", flat=True)) == young


def test_a_run_out_of_time_stops_between_batches_and_the_next_run_finishes(settings):
    user = make_user()
    for n in range(5):
        remembered_key(user, f"old-{n}", created_at=days_ago(3))

    first = idempotency.purge_expired(batch_size=2, time_budget_seconds=1e-9)
    second = idempotency.purge_expired(batch_size=2)

    assert (first.deleted, first.batches, first.finished) == (2, 1, False)
    assert (second.deleted, second.finished) == (3, True)
    assert not IdempotencyRecord.objects.exists()


def test_the_trim_command_reports_each_batch_and_what_each_trim_deleted():
    user = make_user()
    for n in range(5):
        remembered_key(user, f"old-{n}", created_at=days_ago(3))
    out = io.StringIO()

    call_command("trim_history", "--batch-size", "2", stdout=out)

    lines = out.getvalue().splitlines()
    assert "  idempotency keys: 2 deleted in 1 batches so far" in lines
    assert "  idempotency keys: 4 deleted in 2 batches so far" in lines
    assert "idempotency keys: 5 deleted in 3 batches" in lines
    assert {"order events: 0 deleted in 1 batches", "stock reservations: 0 deleted in 1 batches"} <= set(lines)
    assert not IdempotencyRecord.objects.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "must be at least 1"),
        (["--time-budget", "-1"], "must be a positive number of seconds"),
        (["--only", "orders"], "invalid choice"),
    ],
)
def test_the_trim_command_refuses_bad_arguments(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("trim_history", *args, stdout=io.StringIO(), stderr=io.StringIO())


def test_beat_runs_each_trim_hourly_and_each_task_exists():
    celery_app.loader.import_default_modules()
    schedule = {entry["task"]: entry["schedule"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    trims = ["orders.tasks.purge_idempotency_keys", "orders.tasks.trim_order_events",
             "inventory.tasks.trim_stock_reservations"]  # fmt: skip

    assert {task: schedule.get(task) for task in trims} == dict.fromkeys(trims, 3600.0)
    assert set(schedule) <= set(celery_app.tasks)
    assert [celery_app.tasks[task]() for task in trims] == [0, 0, 0]  # nothing to trim: each runs
