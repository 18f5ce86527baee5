"""Retention of settled reservations (docs/retention.md): old rows go in batches, and never a row
that still keeps a sale and a release of the same reservation apart."""

from __future__ import annotations

import datetime
import time
import uuid

import pytest
from django.db import transaction
from django.utils import timezone

from devtools.testing import make_product
from inventory import redis_counts
from inventory.models import StockReservation
from inventory.reconciliation import inventory_reconcile, on_hand_by_product
from inventory.services import inventory_trim_reservations, stock_record_sale, stock_reserve
from inventory.shards import stock_shards

(ONLY_SHARD,) = stock_shards()  # these tests run on one Redis, one shard

pytestmark = pytest.mark.django_db(transaction=True)

DAY = 24 * 3600


def settled(state: str, *, seconds_ago: float) -> uuid.UUID:
    token = uuid.uuid4()
    StockReservation.objects.create(token=token, state=state)
    StockReservation.objects.filter(token=token).update(
        created_at=timezone.now() - datetime.timedelta(seconds=seconds_ago)
    )
    return token


def test_settled_reservations_past_retention_go_in_batches_and_younger_ones_stay(settings):
    settings.STOCK_RESERVATION_RETENTION_SECONDS = DAY
    for n in range(7):
        settled(StockReservation.State.SOLD if n % 2 else StockReservation.State.RELEASED, seconds_ago=DAY + 60)
    young = {settled(StockReservation.State.SOLD, seconds_ago=DAY - 3600) for _ in range(2)}

    result = inventory_trim_reservations(batch_size=3)

    assert (result.deleted, result.batches, result.finished) == (7, 3, True)
    assert set(StockReservation.objects.values_list("token", flat=True)) == young


def test_a_sold_reservation_redis_still_tracks_keeps_its_row_so_reconciliation_never_releases_it(settings):
    """Forgetting and reconciliation stopped for days: Redis still tracks a reservation sold two
    days ago. Its SOLD row is past retention, but deleting it would make reconciliation take the
    sale for an abandoned reservation and give its units back (2 units sold twice)."""
    settings.STOCK_RESERVATION_RETENTION_SECONDS = DAY
    product = make_product(stock_quantity=10)
    reservation = stock_reserve(quantities={product.id: 2})
    with transaction.atomic():
        stock_record_sale(reservation=reservation, quantities={product.id: 2}, reference="two days ago")
    two_days_ago = time.time() - 2 * DAY
    redis_counts.redis_client().zadd(
        ONLY_SHARD.reservations_key, {str(reservation.token): int(two_days_ago * 1000)}, xx=True
    )
    StockReservation.objects.filter(token=reservation.token).update(
        created_at=datetime.datetime.fromtimestamp(two_days_ago + 0.5, tz=datetime.UTC)
    )
    older = settled(StockReservation.State.RELEASED, seconds_ago=3 * DAY)

    result = inventory_trim_reservations(batch_size=1)

    assert result.deleted == 1 and not StockReservation.objects.filter(token=older).exists()
    assert StockReservation.objects.filter(token=reservation.token, state=StockReservation.State.SOLD).exists()
    report = inventory_reconcile()
    assert report.released_tokens == [] and report.forgotten_tokens == 1
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 8} == on_hand_by_product()
    # Forgotten now, the row may go at the next run.
    assert inventory_trim_reservations().deleted == 1
