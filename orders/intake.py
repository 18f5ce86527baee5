"""The intake: asynchronous orders accepted by Redis alone, drained into PostgreSQL in batches.

The usual asynchronous order (no coupon, no Idempotency-Key) is one Redis script and no SQL:
intake.lua counts the rate limits, checks the backlog bound, the quoted prices against the
catalogue's mirror, the user's cap of unpaid orders, stock and purchase limits, reserves the
units, takes an order id from the block PostgreSQL handed out, keeps the order's record and
appends it to the intake stream, all or nothing. With `appendfsync always` Redis has the order
on disk before the 202 goes out. Settlers (orders/settlement.py) read the stream as a consumer
group, write each batch PAID or CANCELLED in one transaction, and acknowledge it after the commit.

Keys:
    ord:ids                 order ids PostgreSQL's sequence handed out, not yet used (a list)
    ord:accepted            hash order id -> status letter and record (JSON) of every accepted
                            order not yet drained: A accepted, S a settler is paying it,
                            C its buyer cancelled it
    ord:undrained:{user}    set of the user's orders not yet drained (the unpaid cap, the list)
    ord:intake              the stream settlers drain (entry: o = order id)
    ord:intake:accepted     how many orders this generation of the intake accepted...
    ord:intake:drained      ...and how many settlers drained (loss detection: IntakeGeneration)
    ord:intake:generation   a random id made with the first of these keys: absent or another
                            after Redis lost its data
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
import redis
from django.conf import settings
from django_redis import get_redis_connection

from inventory import redis_counts
from inventory.errors import ProductUnavailable
from inventory.redis_counts import AdmissionCounter, ReserveResult
from inventory.services import stock_refusal
from inventory.shards import StockShard, stock_shards
from kernel import metrics
from kernel.database import sql_all
from kernel.errors import DomainError
from kernel.redis_scripts import run_lua
from orders import events
from orders.errors import OrderOutcomeUnknown, PaymentBacklogFull, PriceChanged, TooManyUnpaidOrders
from orders.models import IntakeGeneration, Order, OrderEvent, OrderStatus, PlacedItem

logger = logging.getLogger(__name__)

ID_BLOCK_KEY = "ord:ids"
RECORDS_KEY = "ord:accepted"
UNDRAINED_PREFIX = "ord:undrained:"
STREAM_KEY = "ord:intake"
ACCEPTED_COUNT_KEY = "ord:intake:accepted"
DRAINED_COUNT_KEY = "ord:intake:drained"
GENERATION_KEY = "ord:intake:generation"
GROUP = "settlers"
_LUA_DIR = Path(__file__).parent / "lua"


def _run(name: str, *, keys: list[str], args: list[object]):
    return run_lua(_LUA_DIR / f"{name}.lua", keys=keys, args=args)


def _redis():
    """The intake's keys live on the one Redis (REDIS_URL), with the stock it reserves from."""
    return get_redis_connection("default")


def intake_shard() -> StockShard:
    """The one stock shard the intake reserves on: its keys and the intake's share one script,
    so it runs only while stock is not sharded (STOCK_SHARDS=1; intake_in_use)."""
    (shard,) = stock_shards()
    return shard


def intake_in_use() -> bool:
    """Whether the usual asynchronous order goes to the intake: ORDER_ASYNC_INTAKE=redis, and
    stock on one shard (sharded, the database's path takes it: docs/redis-cluster.md)."""
    return settings.ORDER_ASYNC_INTAKE == "redis" and len(stock_shards()) == 1


def undrained_key(user_id: int) -> str:
    return f"{UNDRAINED_PREFIX}{user_id}"


@dataclass(frozen=True, slots=True)
class AcceptedOrder:
    """An order the intake holds until a settler drains it."""

    order_id: int
    user_id: int
    created_ms: int
    token: uuid.UUID
    items: tuple[tuple[int, int, int], ...]  # product id, quantity, unit price
    status: str = "A"  # A accepted, S being settled, C cancelled by its buyer

    @property
    def created_at(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.created_ms / 1000, tz=datetime.UTC)

    @property
    def total(self) -> int:
        return sum(quantity * price for _, quantity, price in self.items)

    @property
    def cancelled(self) -> bool:
        return self.status == "C"

    def as_order(self, *, status: str | None = None) -> Order:
        """The order as the API shows it (PENDING_PAYMENT, or CANCELLED once its buyer cancelled
        it), with its progress so far; not saved: the settler writes it (as `status`)."""
        if status is None:
            status = OrderStatus.CANCELLED if self.cancelled else OrderStatus.PENDING_PAYMENT
        order = Order(id=self.order_id, user_id=self.user_id, status=status, total_amount=self.total,
                      discount_amount=0, paid_amount=0, coupon_code="", reservation_token=self.token,
                      created_at=self.created_at, updated_at=self.created_at)  # fmt: skip
        order.items_cache = [PlacedItem(pid, quantity, price) for pid, quantity, price in self.items]
        steps = [events.CREATED, events.CANCELLED] if self.cancelled else [events.CREATED]
        order.events_cache = [OrderEvent(order_id=self.order_id, type=t, created_at=self.created_at) for t in steps]
        return order

    @classmethod
    def parse(cls, order_id: int, record: bytes | str) -> AcceptedOrder:
        if isinstance(record, bytes):
            record = record.decode()
        fields = orjson.loads(record[1:])
        return cls(order_id=int(order_id), user_id=int(fields["u"]), created_ms=int(fields["t"]),
                   token=uuid.UUID(fields["k"]), items=tuple((int(p), int(q), int(u)) for p, q, u in fields["i"]),
                   status=record[0])  # fmt: skip


class _PriceNotMirrored(Exception):
    """The catalogue's mirror does not know one of the products: the database's path decides."""


def intake_accept(
    *,
    user_id: int,
    quantities: dict[int, int],
    quoted: dict[int, int],
    counters: tuple[AdmissionCounter, ...],
    unpaid_cap: int | None,
) -> AcceptedOrder | None:
    """Accept the order in Redis alone (intake.lua); None if the mirror does not know one of its
    products (the caller takes the database's path: nothing was counted or reserved).

    Raises what the reservation raises (RateLimited, OutOfStock, PurchaseLimitReached,
    StockNotLoaded), PaymentBacklogFull, ProductUnavailable, PriceChanged, TooManyUnpaidOrders."""
    token = uuid.uuid4()
    product_ids = sorted(quantities)
    stock_keys = redis_counts.reservation_keys(shard=intake_shard(), token=token, product_ids=product_ids)
    keys = [*stock_keys.head, ID_BLOCK_KEY, RECORDS_KEY, undrained_key(user_id), STREAM_KEY, ACCEPTED_COUNT_KEY,
            *(c.key for c in counters), *stock_keys.per_product]  # fmt: skip
    bound = settings.PAYMENT_BACKLOG_MAX_SECONDS
    args: list[object] = [str(token), user_id, unpaid_cap or 0, int(bound * 1000) if math.isfinite(bound) else 0,
                          len(counters), len(product_ids)]  # fmt: skip
    for counter in counters:
        args += [counter.limit, counter.window_ms]
    for pid in product_ids:
        args += [pid, quantities[pid], quoted[pid]]
    items = tuple((pid, quantities[pid], quoted[pid]) for pid in product_ids)
    for _ in range(3):  # an empty id block is refilled (by this worker or another) and the script run again
        try:
            result = _run("intake", keys=keys, args=args)
        except (redis.ConnectionError, redis.TimeoutError):
            accepted = _accepted_despite_lost_reply(token=token, user_id=user_id, items=items)
            if accepted is None:
                raise  # the script did not run: nothing was changed, as the 503 says
            return accepted
        if result[0] != -8:
            break
        order_ids_refill()
    else:
        raise RuntimeError("the intake's order id block stayed empty after refills")
    code = int(result[0])
    if code == 1:
        return AcceptedOrder(order_id=int(result[1]), user_id=user_id, created_ms=int(result[3]), token=token,
                             items=items)  # fmt: skip
    if code == -4:
        return None
    raise _refusal(result, quantities=quantities, counters=counters, unpaid_cap=unpaid_cap)


def _accepted_despite_lost_reply(
    *, token: uuid.UUID, user_id: int, items: tuple[tuple[int, int, int], ...]
) -> AcceptedOrder | None:
    """The intake's call failed without its reply (Redis killed or cut off mid-call): the
    script ran whole or not at all, so its reservation tells which. Accepted, the order is
    answered 202 like any other (a 503 would make the client order it again); not, the caller's
    503 is true. While Redis does not answer (it may be replaying its append-only file), this
    waits up to INTAKE_LOST_REPLY_WAIT_SECONDS, then answers that the outcome is unknown."""
    deadline = time.monotonic() + settings.INTAKE_LOST_REPLY_WAIT_SECONDS
    while True:
        try:
            order_id = _redis().hget(intake_shard().reservation_key(token), "o")
            break
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as away:
            if time.monotonic() > deadline:
                logger.warning("the intake's reply for reservation %s was lost and Redis is away", token)
                raise OrderOutcomeUnknown() from away
            time.sleep(0.1)
    if order_id is None:  # or settled and forgotten meanwhile: then its order is in the database
        order_id = Order.objects.filter(reservation_token=token).values_list("id", flat=True).first()
        if order_id is None:
            return None
    logger.warning("the intake's reply was lost; order %s was accepted, answered as such", int(order_id))
    record = accepted_order(order_id=int(order_id))
    created_ms = record.created_ms if record else int(time.time() * 1000)
    return AcceptedOrder(order_id=int(order_id), user_id=user_id, created_ms=created_ms, token=token, items=items)


def _refusal(result: list, *, quantities, counters, unpaid_cap) -> DomainError:
    code = int(result[0])
    if code == -9:
        behind = int(result[1]) / 1000
        limit = settings.PAYMENT_BACKLOG_MAX_SECONDS
        return PaymentBacklogFull(details={"backlogSeconds": round(behind, 1), "limitSeconds": limit},
                                  retry_after=max(1, min(30, round(behind - limit))))  # fmt: skip
    if code == -5:
        return ProductUnavailable(details={"productIds": sorted(int(pid) for pid in result[1:])})
    if code == -6:
        pairs = result[1:]
        return PriceChanged(details={"currentPrices": {pairs[i].decode(): int(pairs[i + 1])
                                                       for i in range(0, len(pairs), 2)}})  # fmt: skip
    if code == -7:
        return TooManyUnpaidOrders(details={"limit": unpaid_cap, "unpaid": int(result[1])})
    if code == -1:
        return stock_refusal(ReserveResult(ok=False, loaded=False), quantities=quantities)
    if code == -2:
        return stock_refusal(ReserveResult(ok=False, refused_by=counters[int(result[1]) - 1],
                                           retry_after_ms=int(result[2])), quantities=quantities)  # fmt: skip
    if code == -3:
        return stock_refusal(ReserveResult(ok=False, failed_product_id=int(result[1]), limit=int(result[2]),
                                           held=int(result[3])), quantities=quantities)  # fmt: skip
    return stock_refusal(ReserveResult(ok=False, failed_product_id=int(result[1]), available=int(result[2])),
                         quantities=quantities)  # fmt: skip


def order_ids_refill(*, count: int | None = None) -> int:
    """Hand the intake a block of order ids from PostgreSQL's sequence (the one the synchronous
    orders' rows take theirs from): never reused, whatever crashes, since the sequence is past
    them; ids of a block Redis loses are gaps, as a rolled-back insert's are."""
    count = count or settings.ORDER_ID_BLOCK_SIZE
    rows = sql_all("SELECT nextval(pg_get_serial_sequence('orders_order', 'id')) FROM generate_series(1, %s)", [count])
    _redis().rpush(ID_BLOCK_KEY, *(row[0] for row in rows))
    return len(rows)


# --- Reading what the intake holds (an order answered 202, not yet drained) ------------------------


def accepted_order(*, order_id: int) -> AcceptedOrder | None:
    record = _redis().hget(RECORDS_KEY, order_id)
    return AcceptedOrder.parse(order_id, record) if record else None


def accepted_orders_of(*, user_id: int) -> list[AcceptedOrder]:
    """The user's orders not yet drained, newest first."""
    client = _redis()
    ids = sorted((int(i) for i in client.smembers(undrained_key(user_id))), reverse=True)
    if not ids:
        return []
    records = client.hmget(RECORDS_KEY, ids)
    return [AcceptedOrder.parse(i, r) for i, r in zip(ids, records, strict=True) if r]


@dataclass(frozen=True, slots=True)
class CancelAnswer:
    outcome: str  # "cancelled", "already", "settling", "not_here"
    order: AcceptedOrder | None = None


def accepted_order_cancel(*, order_id: int, user_id: int) -> CancelAnswer:
    """Mark an undrained order cancelled by its buyer (intake_cancel.lua); its settler writes it
    CANCELLED and gives its stock back through the ledger."""
    result = _run("intake_cancel", keys=[RECORDS_KEY], args=[order_id, user_id])
    outcome = {0: "not_here", 1: "cancelled", 2: "settling", 3: "already"}[int(result[0])]
    order = AcceptedOrder.parse(order_id, result[1]) if len(result) > 1 else None
    return CancelAnswer(outcome=outcome, order=order)


# --- The settlers' side -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IntakeEntry:
    entry_id: str
    order_id: int


def group_ensure() -> None:
    """The settlers' consumer group, made with the stream if need be (again after Redis lost
    both: then the orders lost with it are counted, intake_lost_count)."""
    try:
        _redis().xgroup_create(STREAM_KEY, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    intake_seen()


def intake_seen() -> str:
    """Record in the database what this generation of the intake has accepted and drained (a
    settler does after each batch), and count the orders of any earlier generation Redis lost
    since (once, whichever settler sees it first). Returns the current generation."""
    client = _redis()
    client.set(GENERATION_KEY, uuid.uuid4().hex, nx=True)
    generation, accepted, drained = (v.decode() if v else "0" for v in client.mget(
        GENERATION_KEY, ACCEPTED_COUNT_KEY, DRAINED_COUNT_KEY))  # fmt: skip
    sql_all(_SEEN_SQL, {"generation": generation, "accepted": int(accepted), "drained": int(drained)})
    for gone, lost in sql_all(_LOST_SQL, {"generation": generation}):
        if lost:
            _count_lost(lost, generation=gone)
    return generation


def _count_lost(count: int, *, generation: str) -> None:
    metrics.INTAKE_LOST_ORDERS.inc(count)
    logger.error("Redis lost its data: at least %d accepted orders of intake generation %s were never drained; "
                 "none was charged, and their units are back in stock once it is rebuilt", count,
                 generation)  # fmt: skip


_TABLE = IntakeGeneration._meta.db_table
_SEEN_SQL = f"""
INSERT INTO {_TABLE} (generation, accepted, drained, seen_at) VALUES (%(generation)s, %(accepted)s, %(drained)s, now())
ON CONFLICT (generation) DO UPDATE SET accepted = GREATEST({_TABLE}.accepted, EXCLUDED.accepted),
    drained = GREATEST({_TABLE}.drained, EXCLUDED.drained), seen_at = now()
RETURNING 1
"""
# The generations before the current one that nobody has counted yet: counted now, once.
_LOST_SQL = f"""
UPDATE {_TABLE} SET lost = GREATEST(accepted - drained, 0)
WHERE generation <> %(generation)s AND lost IS NULL
RETURNING generation, lost
"""


def settlers_wake() -> None:
    """After an asynchronous order committed to the database (one with a coupon or an
    Idempotency-Key): a wake-up entry, so that an idle settler looks there at once. Lost (Redis
    away), the order waits for the settlers' next look, SETTLE_IDLE_WAIT_SECONDS at most."""
    with contextlib.suppress(redis.RedisError):
        _redis().xadd(STREAM_KEY, {"w": 1})


def _orders_in(reply) -> list[IntakeEntry]:
    """The orders among the entries read; wake-ups and entries deleted while pending (they come
    back without fields) are acknowledged and dropped here."""
    entries, done = [], []
    for entry_id, fields in reply:
        if fields and b"o" in fields:
            entries.append(IntakeEntry(entry_id.decode(), int(fields[b"o"])))
        else:
            done.append(entry_id.decode())
    if done:
        client = _redis()
        client.xack(STREAM_KEY, GROUP, *done)
        client.xdel(STREAM_KEY, *done)
    return entries


def _read(call):
    """Run a group read; None if the group was missing (made now: Redis came back without it)."""
    try:
        return call()
    except redis.ResponseError as exc:
        if "NOGROUP" not in str(exc):
            raise
        group_ensure()
        return None


def entries_read(*, consumer: str, count: int, claim_idle_ms: int) -> list[IntakeEntry]:
    """The next entries for `consumer`: its own still unacknowledged first (a batch it did not
    finish, or what settlers_wait read), then those another settler left unacknowledged for
    `claim_idle_ms` (it died or hangs), then new ones. Nothing if the group had to be made
    just now (Redis came back without it)."""
    client = _redis()
    for read in (
        lambda: client.xreadgroup(GROUP, consumer, {STREAM_KEY: "0"}, count=count)[0][1],
        lambda: client.xautoclaim(STREAM_KEY, GROUP, consumer, min_idle_time=claim_idle_ms, count=count)[1],
        lambda: (client.xreadgroup(GROUP, consumer, {STREAM_KEY: ">"}, count=count) or [[None, []]])[0][1],
    ):
        reply = _read(read)
        if reply is None:
            return []
        if entries := _orders_in(reply):
            return entries
    return []


def settlers_wait(*, consumer: str, block_ms: int) -> bool:
    """Block until the stream has new entries (they become this consumer's to settle) or
    `block_ms` passed; True if something came."""
    client = _redis()
    reply = _read(lambda: client.xreadgroup(GROUP, consumer, {STREAM_KEY: ">"}, count=1, block=block_ms))
    if not reply:
        return False
    _orders_in(reply[0][1])
    return True


@dataclass(frozen=True, slots=True)
class ClaimedBatch:
    epoch: int | None  # None: stock not loaded, the batch waits for the rebuild
    orders: dict[int, AcceptedOrder | None]  # None: no record (drained already, or Redis lost it)


def entries_claim(order_ids: Sequence[int]) -> ClaimedBatch:
    shard = intake_shard()
    reply = _run("intake_claim", keys=[RECORDS_KEY, shard.ready_key, shard.epoch_key], args=list(order_ids))
    if not reply[0]:
        return ClaimedBatch(epoch=None, orders={})
    flat = reply[1]
    orders = {}
    for i in range(0, len(flat), 2):
        order_id = int(flat[i])
        orders[order_id] = AcceptedOrder.parse(order_id, flat[i + 1]) if flat[i + 1] else None
    return ClaimedBatch(epoch=int(reply[0]), orders=orders)


def entries_drained(entries: Sequence[tuple[IntakeEntry, int]]) -> None:
    """After the batch's commit: (entry, its order's user id) acknowledged and forgotten."""
    if not entries:
        return
    keys = [STREAM_KEY, RECORDS_KEY, DRAINED_COUNT_KEY, *(undrained_key(user_id) for _, user_id in entries)]
    args: list[object] = [GROUP]
    for entry, _ in entries:
        args += [entry.entry_id, entry.order_id]
    _run("intake_drained", keys=keys, args=args)


def entries_forget(entries: Sequence[IntakeEntry]) -> None:
    """Entries whose record is gone (Redis lost it): acknowledged, nothing else to do."""
    if entries:
        client = _redis()
        client.xack(STREAM_KEY, GROUP, *(e.entry_id for e in entries))
        client.xdel(STREAM_KEY, *(e.entry_id for e in entries))


def intake_backlog() -> int:
    """Orders accepted and not yet drained."""
    return int(_redis().hlen(RECORDS_KEY))


def undrained_order_ids() -> list[int]:
    return sorted(int(i) for i in _redis().hkeys(RECORDS_KEY))


def intake_oldest_seconds() -> float:
    """How long the oldest undrained entry has waited (0: none), by Redis' clock."""
    client = _redis()
    oldest = client.xrange(STREAM_KEY, count=1)
    if not oldest:
        return 0.0
    seconds, micros = client.time()
    return max(0.0, seconds + micros / 1e6 - int(oldest[0][0].split(b"-")[0]) / 1000)
