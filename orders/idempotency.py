"""Idempotency-Key: the first answer to a key is the answer to every retry with that key.

The first request takes the key before it does anything (an in-progress row, unique per user
and key); a request arriving with the same key meanwhile waits for that answer and replays it,
so racing duplicates never compete for stock or money. The order's own transaction records
its answer on the row; a refusal once the order's stock was reserved and its money or coupon
looked at is recorded too (a retry gets the same error, not a second attempt). Any other
refusal (out of stock, rate limited, a product or price that does not hold: nothing changed)
and a transient failure (503) drop the row, so a retry is a real one and a client cannot make
the database keep refusals. A user holds at most IDEMPOTENCY_KEYS_PER_USER keys at once.

A row left in progress by a crashed process is taken over after IDEMPOTENCY_STALE_SECONDS, as
measured by the database's clock (one clock for every web host). Taking the key writes a fresh
owner id on the row, and the answer is recorded only by the request that still owns it: a first
request that was merely slow, and whose retry took its key over meanwhile, fails with CONFLICT
inside its order's transaction, so its order never commits and only the retry's does.
"""

from __future__ import annotations

import datetime
import math
import time
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.db import connection
from django.db.models import DateTimeField, ExpressionWrapper
from django.db.models.functions import Now
from django.utils import timezone
from rest_framework import status

from kernel.errors import DomainError, ErrorCode, error_body
from kernel.retention import Progress, TrimResult, statement_batches, trim_in_batches
from orders.errors import IdempotencyKeyReused, TooManyIdempotencyKeys
from orders.models import IdempotencyRecord, Order, PlacedItem
from orders.results import PlacedOrder, placement_of_status_code, placement_status_code

IN_PROGRESS = 0  # status_code of a key whose first request has not answered yet

# Which refusals are kept as the key's answer is the error class's to say (DomainError.replayable).

# Takes the key while its user holds fewer than %(cap)s (counted over the unique index's
# (user_id, key) prefix, never past the cap); `keys` says how many it found.
_TAKE_SQL = f"""
WITH live AS (
    SELECT count(*) AS keys FROM (
        SELECT 1 FROM {IdempotencyRecord._meta.db_table} WHERE user_id = %(user_id)s LIMIT %(cap)s
    ) AS held
), taken AS (
    INSERT INTO {IdempotencyRecord._meta.db_table}
        (user_id, key, request_fingerprint, status_code, response_body, order_id, owner, created_at)
    SELECT %(user_id)s, %(key)s, %(fingerprint)s, 0, '{{}}', NULL, %(owner)s, now() FROM live WHERE live.keys < %(cap)s
    ON CONFLICT (user_id, key) DO NOTHING
    RETURNING id
)
SELECT (SELECT id FROM taken), live.keys FROM live
"""


@dataclass(frozen=True, slots=True)
class Claim:
    """A key this request holds: `owner` is written on the row when it is taken."""

    user_id: int
    key: str
    owner: uuid.UUID


class RememberedError(DomainError):
    """Replays an error answer given earlier to the same key."""

    def __init__(self, record: IdempotencyRecord):
        error = record.response_body["error"]
        self.code = error["code"]
        self.status_code = record.status_code
        super().__init__(error["message"], details=error.get("details"))


class RequestInProgress(DomainError):
    code = ErrorCode.CONFLICT
    status_code = status.HTTP_409_CONFLICT
    default_message = "A request with this Idempotency-Key is still being processed; retry shortly."


class KeyTakenOver(DomainError):
    """This request outlived IDEMPOTENCY_STALE_SECONDS and a retry took its key: the retry's
    answer is the key's answer, and this request's order is rolled back."""

    code = ErrorCode.CONFLICT
    status_code = status.HTTP_409_CONFLICT
    default_message = (
        "This request took too long and a retry with the same Idempotency-Key took it over; "
        "nothing was ordered by this request. Retry with the same key to get the retry's answer."
    )


def begin(*, user_id: int, key: str, fingerprint: str) -> Claim | PlacedOrder:
    """Take the key (a Claim: go ahead), or return the answer of the request that took it.

    Raises IdempotencyKeyReused for another body, RememberedError for a recorded error,
    RequestInProgress if the first request is still running after IDEMPOTENCY_WAIT_SECONDS, and
    TooManyIdempotencyKeys for a new key while the user holds IDEMPOTENCY_KEYS_PER_USER.
    """
    claim = Claim(user_id=user_id, key=key, owner=uuid.uuid4())
    cap = settings.IDEMPOTENCY_KEYS_PER_USER
    params = {"user_id": user_id, "key": key, "fingerprint": fingerprint, "owner": claim.owner, "cap": cap}
    deadline = time.monotonic() + settings.IDEMPOTENCY_WAIT_SECONDS
    while True:
        with connection.cursor() as cursor:
            cursor.execute(_TAKE_SQL, params)
            taken, keys = cursor.fetchone()
        if taken is not None:
            return claim
        record = IdempotencyRecord.objects.filter(user_id=user_id, key=key).first()
        if record is None:
            if keys >= cap:
                raise TooManyIdempotencyKeys(details={"limit": cap, "ttlHours": settings.IDEMPOTENCY_KEY_TTL_HOURS},
                                             retry_after=_until_a_key_expires(user_id))  # fmt: skip
            continue  # the holder gave the key up a moment ago: try to take it
        if record.request_fingerprint != fingerprint:
            raise IdempotencyKeyReused()
        if record.status_code != IN_PROGRESS:
            return _replay(record)
        if _take_over_if_stale(record, claim):
            return claim
        if time.monotonic() >= deadline:
            raise RequestInProgress()
        time.sleep(0.02)


def _until_a_key_expires(user_id: int) -> int:
    """Seconds until the user's oldest key is past its TTL and purged (beat's purge runs hourly)."""
    oldest = (
        IdempotencyRecord.objects.filter(user_id=user_id)
        .order_by("created_at")
        .values_list("created_at", flat=True)
        .first()
    )
    if oldest is None:  # purged a moment ago
        return 1
    purge_every = settings.CELERY_BEAT_SCHEDULE["purge-idempotency-keys"]["schedule"]
    expires = oldest + datetime.timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS, seconds=purge_every)
    return max(1, math.ceil((expires - timezone.now()).total_seconds()))


def _take_over_if_stale(record: IdempotencyRecord, claim: Claim) -> bool:
    """One UPDATE, staleness judged by the database's clock: hosts whose clocks disagree still
    agree on it, and of two retries racing for the same stale row only one matches."""
    stale_before = ExpressionWrapper(
        Now() - datetime.timedelta(seconds=settings.IDEMPOTENCY_STALE_SECONDS), output_field=DateTimeField()
    )
    return bool(
        IdempotencyRecord.objects.filter(pk=record.pk, status_code=IN_PROGRESS, created_at__lt=stale_before).update(
            owner=claim.owner, created_at=Now()
        )
    )


def _replay(record: IdempotencyRecord) -> PlacedOrder:
    if record.order_id is None:
        raise RememberedError(record)
    order = Order.objects.get(pk=record.order_id)
    PlacedItem.attach([order])
    return PlacedOrder(order=order, placement=placement_of_status_code(record.status_code), replayed=True)


def record_order(*, claim: Claim, placed: PlacedOrder) -> None:
    """Inside the order's transaction: the key's answer commits with the order, or not at all.

    Raises KeyTakenOver if a retry took the key meanwhile: raised here, it rolls the order back.
    (The UPDATE locks the row, so a retry's take-over either came first and is seen here, or
    waits for this transaction and then finds the key answered.)"""
    if not _owned(claim).update(order_id=placed.order.id, status_code=placement_status_code(placed.placement)):
        raise KeyTakenOver()


def record_error(*, claim: Claim, error: DomainError) -> None:
    """The key's answer is this refusal (one whose class is `replayable`)."""
    _owned(claim).update(
        status_code=error.status_code, response_body=error_body(error.code, error.message, error.details)
    )


def give_up(*, claim: Claim) -> None:
    """After a transient failure: drop the in-progress row so that a retry is a real retry."""
    _owned(claim).delete()


def _owned(claim: Claim):
    """The key's row while it is in progress and still this request's (no retry took it over)."""
    return IdempotencyRecord.objects.filter(
        user_id=claim.user_id, key=claim.key, owner=claim.owner, status_code=IN_PROGRESS
    )


# One batch of the purge: the oldest keys past the TTL, by the index on created_at.
_PURGE_SQL = """
DELETE FROM orders_idempotencyrecord WHERE id IN (
    SELECT id FROM orders_idempotencyrecord WHERE created_at < %(cutoff)s ORDER BY created_at LIMIT %(batch_size)s
)
"""


def purge_expired(
    *, batch_size: int | None = None, time_budget_seconds: float | None = None, progress: Progress | None = None
) -> TrimResult:
    """Forget answers older than IDEMPOTENCY_KEY_TTL_HOURS (48 h by default), a batch per
    statement. A retry that late is a new request: clients retry within seconds or minutes."""
    cutoff = timezone.now() - datetime.timedelta(hours=settings.IDEMPOTENCY_KEY_TTL_HOURS)
    delete_batch = statement_batches(_PURGE_SQL, {"cutoff": cutoff})
    return trim_in_batches(
        "idempotency keys", delete_batch, batch_size=batch_size, time_budget_seconds=time_budget_seconds,
        progress=progress,
    )  # fmt: skip
