"""Past orders for a seeded shop, written set-based: a million in minutes, not hours.

Each past order is written as the order path would have left it, so every invariant the load
run checks holds over history and new orders alike: its items at the product's price, the
stock reservation it sold and a SALE movement per item, a captured payment and the balance
entry taking it (`balance_after` the running balance), and its created and paid events, already
published. One in CANCEL_EVERY was cancelled later: the payment refunded (a REFUND entry, the
payment REFUNDED), the units returned (RETURN movements) and an order.cancelled event. One in
KEYED_EVERY carried an Idempotency-Key, whose record is kept. No coupons were used.

Orders are spread evenly over the last `days`, oldest first, so retention (docs/retention.md)
finds what it would find on a shop that has run that long without it.

Which user bought what is a hash of the order's number: the same shape gives the same history.
The statements go by chunks of orders through two temporary tables; the apps' own tables are
written in the columns the apps write, by this tool rather than through the apps' interfaces
(one statement per table per chunk, where the interfaces take one order at a time).
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.db import connection

from accounts.models import Account, BalanceEntry
from inventory.models import Product, StockMovement, StockReservation
from orders import events
from orders.models import IdempotencyRecord, Order, OrderEvent, OrderItem, OrderStatus
from payments.models import Payment, Refund
from payments.references import ORDER_REFERENCE_PREFIX as _REF  # the ledgers' reference of an order

CHUNK = 50_000  # orders per round of statements: each well inside a few seconds
CANCEL_EVERY = 20
KEYED_EVERY = 10
MAX_ITEMS = 3  # items per order: 1..3 distinct products
MAX_QUANTITY = 5  # units per item: 1..5, as the k6 script orders
# Non-negative hashes: hashint8extended is PostgreSQL's own 64-bit hash (abs() of its minimum overflows).
_HASH = "(hashint8extended({value}, {salt}) & 1073741823)"
_TABLES = [Order, OrderItem, StockReservation, StockMovement, Payment, Refund, BalanceEntry, Account, OrderEvent,
           IdempotencyRecord]  # fmt: skip


class HistoryRefused(Exception):
    """The history does not fit the shape (stock or balance would go below zero); nothing was written."""


@dataclass(frozen=True)
class History:
    orders: int
    days: float = 30.0


def _t(model) -> str:
    return model._meta.db_table


_CREATE_SQL = """
CREATE TEMP TABLE history_order (
    id bigint PRIMARY KEY, user_id bigint NOT NULL, cancelled boolean NOT NULL,
    created_at timestamptz NOT NULL, cancelled_at timestamptz NOT NULL, total bigint NOT NULL
) ON COMMIT DROP;
CREATE TEMP TABLE history_item (
    order_id bigint NOT NULL, product_id bigint NOT NULL, quantity int NOT NULL, unit_price bigint NOT NULL
) ON COMMIT DROP;
"""

_ITEMS_SQL = f"""
INSERT INTO history_item (order_id, product_id, quantity, unit_price)
SELECT n, product.id, 1 + {_HASH.format(value="n * 8 + j", salt=2)} %% {MAX_QUANTITY}, product.price
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS n
CROSS JOIN LATERAL generate_series(1, 1 + ({_HASH.format(value="n", salt=1)} %% %(max_items)s)::int) AS j
JOIN {_t(Product)} AS product ON product.id = 1 + ({_HASH.format(value="n", salt=3)} + j - 1) %% %(products)s
"""

_ORDERS_SQL = f"""
INSERT INTO history_order (id, user_id, cancelled, created_at, cancelled_at, total)
SELECT order_id, 1 + {_HASH.format(value="order_id", salt=4)} %% %(users)s,
       {_HASH.format(value="order_id", salt=5)} %% {CANCEL_EVERY} = 0,
       %(start)s::timestamptz + (order_id - 1) * %(spacing)s::interval,
       %(start)s::timestamptz + (order_id - 0.5) * %(spacing)s::interval,
       sum(quantity::bigint * unit_price)
FROM history_item GROUP BY order_id
"""

_TOKEN = "md5('history:' || o.id)::uuid"

_WRITE_SQL = [
    f"""INSERT INTO {_t(Order)} (id, user_id, status, total_amount, discount_amount, paid_amount, coupon_code,
                                 reservation_token, created_at, updated_at)
    SELECT o.id, o.user_id, CASE WHEN o.cancelled THEN '{OrderStatus.CANCELLED}' ELSE '{OrderStatus.PAID}' END,
           o.total, 0, o.total, '', {_TOKEN}, o.created_at,
           CASE WHEN o.cancelled THEN o.cancelled_at ELSE o.created_at END
    FROM history_order AS o ORDER BY o.id""",
    f"""INSERT INTO {_t(OrderItem)} (order_id, product_id, quantity, unit_price)
    SELECT order_id, product_id, quantity, unit_price FROM history_item ORDER BY order_id, product_id""",
    f"""INSERT INTO {_t(StockReservation)} (token, state, created_at)
    SELECT {_TOKEN}, '{StockReservation.State.SOLD}', o.created_at FROM history_order AS o""",
    f"""INSERT INTO {_t(StockMovement)} (product_id, quantity, kind, reference, reason, holder, created_at)
    SELECT i.product_id, -i.quantity, '{StockMovement.Kind.SALE}', '{_REF}' || o.id, '', o.user_id, o.created_at
    FROM history_item AS i JOIN history_order AS o ON o.id = i.order_id
    UNION ALL
    SELECT i.product_id, i.quantity, '{StockMovement.Kind.RETURN}', '{_REF}' || o.id, '', o.user_id, o.cancelled_at
    FROM history_item AS i JOIN history_order AS o ON o.id = i.order_id WHERE o.cancelled""",
    f"""INSERT INTO {_t(Payment)} (id, order_id, user_id, amount, status, created_at)
    SELECT o.id, o.id, o.user_id, o.total,
           CASE WHEN o.cancelled THEN '{Payment.Status.REFUNDED}' ELSE '{Payment.Status.CAPTURED}' END, o.created_at
    FROM history_order AS o""",
    f"""INSERT INTO {_t(Refund)} (payment_id, amount, created_at)
    SELECT o.id, o.total, o.cancelled_at FROM history_order AS o WHERE o.cancelled""",
    f"""WITH items AS (
        SELECT order_id, jsonb_agg(jsonb_build_object('productId', product_id, 'quantity', quantity)
                                   ORDER BY product_id) AS items
        FROM history_item GROUP BY order_id
    )
    INSERT INTO {_t(OrderEvent)} (event_id, order_id, type, payload, created_at, published_at)
    SELECT gen_random_uuid(), o.id, e.type,
           jsonb_build_object('status', e.status, 'previousStatus', e.previous, 'userId', o.user_id,
                              'totalAmount', o.total, 'paidAmount', e.paid, 'items', items.items),
           e.at, e.at + interval '1 second'
    FROM history_order AS o JOIN items ON items.order_id = o.id
    CROSS JOIN LATERAL (VALUES
        (1, '{events.CREATED}', '{OrderStatus.PENDING_PAYMENT}', NULL, 0::bigint, o.created_at),
        (2, '{events.PAID}', '{OrderStatus.PAID}', '{OrderStatus.PENDING_PAYMENT}', o.total, o.created_at),
        (3, '{events.CANCELLED}', '{OrderStatus.CANCELLED}', '{OrderStatus.PAID}', o.total, o.cancelled_at)
    ) AS e(position, type, status, previous, paid, at)
    WHERE e.position < 3 OR o.cancelled
    ORDER BY o.id, e.position""",
    f"""INSERT INTO {_t(IdempotencyRecord)} (user_id, key, request_fingerprint, status_code, response_body,
                                             order_id, created_at)
    SELECT o.user_id, 'history-' || o.id, encode(sha256(('history:' || o.id)::bytea), 'hex'), 201,
           jsonb_build_object('orderId', o.id, 'status', '{OrderStatus.PAID}'), o.id, o.created_at
    FROM history_order AS o WHERE o.id % {KEYED_EVERY} = 0""",
]

# The ledger in order of time: a refund straight after its payment. The lowest balance any
# entry leaves comes back, so that a history the balances cannot pay for is refused.
_LEDGER_SQL = f"""
WITH moves AS (
    SELECT user_id, -total AS amount, '{BalanceEntry.Kind.PAYMENT}' AS kind, id AS order_id, created_at AS at,
           id * 2 AS position
    FROM history_order
    UNION ALL
    SELECT user_id, total, '{BalanceEntry.Kind.REFUND}', id, cancelled_at, id * 2 + 1 FROM history_order WHERE cancelled
), written AS (
    INSERT INTO {_t(BalanceEntry)} (account_id, amount, kind, reference, balance_after, created_at)
    SELECT moves.user_id, moves.amount, moves.kind, '{_REF}' || moves.order_id,
           account.balance + sum(moves.amount) OVER (PARTITION BY moves.user_id ORDER BY moves.position), moves.at
    FROM moves JOIN {_t(Account)} AS account ON account.user_id = moves.user_id
    ORDER BY moves.position
    RETURNING balance_after
)
SELECT min(balance_after) FROM written
"""

_BALANCES_SQL = f"""
UPDATE {_t(Account)} AS account
SET balance = account.balance + spent.net, version = account.version + spent.changes
FROM (
    SELECT user_id, sum(CASE WHEN cancelled THEN 0 ELSE -total END) AS net,
           count(*) + count(*) FILTER (WHERE cancelled) AS changes
    FROM history_order GROUP BY user_id
) AS spent
WHERE account.user_id = spent.user_id
"""

_OVERSOLD_SQL = f"""
SELECT product_id, sum(quantity) FROM {_t(StockMovement)} GROUP BY product_id HAVING sum(quantity) < 0
ORDER BY product_id LIMIT 5
"""


def history_write(
    history: History, *, users: int, products: int, progress: Callable[[str], None] = lambda _: None
) -> None:
    """Write `history.orders` past orders of customers 1..`users` over products 1..`products`.

    Inside the caller's transaction, after the shape is seeded and before anything else is
    written (orders and payments take ids 1..orders). Raises HistoryRefused when a product's
    stock or a customer's balance cannot carry it; the caller's transaction then rolls back.
    """
    if history.orders <= 0:
        return
    now = datetime.datetime.now(datetime.UTC)
    spacing = datetime.timedelta(days=history.days) / history.orders
    params = {"users": users, "products": products, "max_items": min(MAX_ITEMS, products),
              "start": now - datetime.timedelta(days=history.days), "spacing": spacing}  # fmt: skip
    started = time.monotonic()
    with connection.cursor() as cursor:
        # An admin's bulk load: the request path's statement timeout is not meant for it.
        cursor.execute("SET LOCAL statement_timeout = 0")
        cursor.execute(_CREATE_SQL)
        for first in range(1, history.orders + 1, CHUNK):
            last = min(first + CHUNK - 1, history.orders)
            cursor.execute("TRUNCATE history_order, history_item")
            cursor.execute(_ITEMS_SQL, {**params, "first": first, "last": last})
            cursor.execute(_ORDERS_SQL, params)
            for statement in _WRITE_SQL:
                cursor.execute(statement)
            cursor.execute(_LEDGER_SQL)
            (lowest,) = cursor.fetchone()
            if lowest is not None and lowest < 0:
                raise HistoryRefused(
                    f"{history.orders} past orders take some customer's balance below zero ({lowest}); "
                    "seed a bigger --balance or fewer --orders"
                )
            cursor.execute(_BALANCES_SQL)
            progress(_progress_line(last, history.orders, time.monotonic() - started))
        cursor.execute(_OVERSOLD_SQL)
        oversold = cursor.fetchall()
        if oversold:
            named = ", ".join(f"product {pid} ({units})" for pid, units in oversold)
            raise HistoryRefused(
                f"{history.orders} past orders sell more than the stock of {named}; "
                "seed a bigger --stock, more --products or fewer --orders"
            )
        for model in (Order, Payment):  # written with ids 1..orders: new ones go on after them
            cursor.execute(f"SELECT setval(pg_get_serial_sequence('{_t(model)}', 'id'), %s)", [history.orders])


def _progress_line(done: int, total: int, elapsed: float) -> str:
    left = elapsed / done * (total - done)
    return f"past orders: {done:,} of {total:,} ({done / total:.0%}), {elapsed:.0f} s, about {left:.0f} s left"


def history_vacuum(*, progress: Callable[[str], None] = lambda _: None) -> None:
    """VACUUM ANALYZE what history filled, outside any transaction: the planner gets the new
    sizes, and the first load run does not pay for setting millions of rows' hint bits."""
    for model in _TABLES:
        started = time.monotonic()
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM (ANALYZE) {_t(model)}")
        progress(f"vacuumed and analysed {_t(model)} in {time.monotonic() - started:.1f} s")
