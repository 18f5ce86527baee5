"""The order path's SQL: the order with its items and events, and the statements that write
it, composed from each app's own fragments (inventory/queries.py, accounts/queries.py,
payments/queries.py); the status move; the settlement's claim and mark-paid. Composed with
psycopg.sql and rendered once at import: the hot path runs each statement's text, never
composing it again. Every statement as PostgreSQL runs it is written out whole in
orders/sql/<name>.sql, kept by a golden test (orders/tests/test_sql_golden.py).

Each fragment's parameters are one SqlParams class; a Statement lists the classes it takes and
checks at import that their names are disjoint, so no fragment can bind another's value.

Why SQL at all: the usual order is one statement in autocommit, one round trip for the order,
its sale, its payment and the balance change (orders/tests/test_round_trips.py counts them)."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

from psycopg import sql

from accounts.queries import BalanceChange, balance_change_ctes, balance_entry_cte
from inventory.queries import (
    EPOCH_AND_PRICES_FENCE,
    EPOCH_FENCE,
    QuotedPrices,
    ReservationToken,
    StockEpoch,
    StockSale,
    StockSales,
    stock_sale_ctes,
    stock_sales_ctes,
)
from kernel.database import SqlParams, Statement
from orders.models import PENDING_SQL, Order, OrderEvent, OrderItem
from payments.queries import NewPayment, payment_insert_cte
from payments.references import order_reference_sql

SETTLE_CHANNEL = "orders_pending"  # settlers LISTEN here (orders/settlement.py)

_ORDER = sql.Identifier(Order._meta.db_table)
_ITEM = sql.Identifier(OrderItem._meta.db_table)
_EVENT = sql.Identifier(OrderEvent._meta.db_table)
_NEW_ORDER = sql.Identifier("new_order")
# The ledger reference of an order's stock and money (payments.references.order_reference).
_NEW_ORDER_REFERENCE = order_reference_sql(sql.Identifier("new_order", "id"))


# --- Events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewEvents(SqlParams):
    """The events to write, one JSON array (orders.events.as_json)."""

    events: str


def events_insert(*, order_id: sql.Composable, source: sql.Identifier | None = None) -> sql.Composed:
    """The INSERT of the events in NewEvents for the order whose id is the SQL expression
    `order_id`, taken from `source` (a CTE of the same statement) if given.

    Events keep the order given: their ids, and so the relay's order, follow their position."""
    return sql.SQL("""
INSERT INTO {event} (event_id, order_id, type, payload, created_at)
SELECT gen_random_uuid(), {order_id}, event.value->>'type', event.value->'payload', clock_timestamp()
FROM {source}jsonb_array_elements({events}::jsonb) WITH ORDINALITY AS event(value, position)
ORDER BY event.position
""").format(
        event=_EVENT,
        order_id=order_id,
        source=sql.SQL("{}, ").format(source) if source else sql.SQL(""),
        events=NewEvents.placeholder("events"),
    )


@dataclass(frozen=True, slots=True)
class EventsOf(SqlParams):
    """The order whose events come with no status change."""

    order_id: int


# Events that come with no status change (created, payment started), all of one order.
EVENTS_RECORD = Statement.compose(
    "events_record", events_insert(order_id=EventsOf.placeholder("order_id")), EventsOf, NewEvents
)


# --- The order ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewOrder(SqlParams):
    """The order row (its reservation token is ReservationToken's) and its items (one JSON array)."""

    user_id: int
    status: str
    total: int
    paid_amount: int
    coupon_code: str
    items: str


@dataclass(frozen=True, slots=True)
class UnpaidCap(SqlParams):
    """The most unpaid orders a user may have (None: no cap)."""

    prefix = "unpaid_"
    cap: int | None


def _order_ctes(condition: sql.Composable) -> sql.Composed:
    """The order, its items and its events (items and events each passed as one JSON array:
    cheaper to send from Python than typed arrays), written only where `condition` holds."""
    return sql.SQL("""
new_order AS (
    INSERT INTO {order} (user_id, status, total_amount, discount_amount, paid_amount, coupon_code,
                              reservation_token, created_at, updated_at)
    SELECT {user_id}, {status}, {total}, 0, {paid_amount}, {coupon_code}, {stock_token}, now(), now()
    {condition}
    RETURNING id, created_at
), items AS (
    INSERT INTO {item} (order_id, product_id, quantity, unit_price)
    SELECT new_order.id, item.product_id, item.quantity, item.unit_price
    FROM new_order, jsonb_to_recordset({items}::jsonb) AS item(product_id bigint, quantity int, unit_price bigint)
), new_events AS ({events})""").format(
        order=_ORDER,
        item=_ITEM,
        user_id=NewOrder.placeholder("user_id"),
        status=NewOrder.placeholder("status"),
        total=NewOrder.placeholder("total"),
        paid_amount=NewOrder.placeholder("paid_amount"),
        coupon_code=NewOrder.placeholder("coupon_code"),
        stock_token=ReservationToken.placeholder("token"),
        items=NewOrder.placeholder("items"),
        condition=condition,
        events=events_insert(order_id=sql.Identifier("new_order", "id"), source=_NEW_ORDER),
    )


_SELECT_ORDER = sql.SQL("\nSELECT id, created_at FROM new_order")
# An unpaid order is written only while its user has fewer than UnpaidCap's (NULL: no cap),
# counted over the partial index orders_order_pending_by_user and never past the cap. Parallel
# orders of one user that all start under the cap may pass it together, by at most as many as
# run at once (each statement sees the others' orders only once they commit): a bound on abuse,
# not a count to the unit; purchase limits, which are, are counted in Redis. PENDING_SQL is
# literal text on purpose (orders/models.py: the partial index in a generic plan).
_UNPAID_CTE = sql.SQL("""unpaid AS (
    SELECT count(*) AS orders FROM (
        SELECT 1 FROM {order} WHERE user_id = {user_id} AND {pending}
        LIMIT coalesce({cap}::int, 0)
    ) AS waiting
), """).format(
    order=_ORDER,
    user_id=NewOrder.placeholder("user_id"),
    pending=sql.SQL(PENDING_SQL),
    cap=UnpaidCap.placeholder("cap"),
)
_UNDER_UNPAID_CAP = sql.SQL("unpaid WHERE {cap}::int IS NULL OR unpaid.orders < {cap}::int").format(
    cap=UnpaidCap.placeholder("cap")
)


def _select_order_and_wake_settlers(fence: sql.Composable) -> sql.Composed:
    """NOTIFY wakes the settlers; it is delivered when (and only if) the order commits. A row
    comes back either way: the order's id is NULL when the cap (or the fence) held it back."""
    return sql.SQL("""
SELECT new_order.id, new_order.created_at, unpaid.orders, {fence},
       (SELECT pg_notify({channel}, '') FROM new_order)
FROM unpaid LEFT JOIN new_order ON true""").format(fence=fence, channel=sql.Literal(SETTLE_CHANNEL))


_FENCE_HOLDS = sql.SQL("EXISTS (SELECT 1 FROM fence)")

# Inside the order's transaction (an order with a coupon or an Idempotency-Key, or the old
# design), which records the sale, the coupon's use and the payment next.
INSERT_ORDER = Statement.compose(
    "insert_order",
    sql.SQL("WITH {order}{select}").format(order=_order_ctes(sql.SQL("")), select=_SELECT_ORDER),
    NewOrder,
    NewEvents,
    ReservationToken,
)
# The same, unpaid, for a settler to pay: under the user's cap of unpaid orders.
INSERT_PENDING_ORDER = Statement.compose(
    "insert_pending_order",
    sql.SQL("WITH {unpaid}{order}{select}").format(
        unpaid=_UNPAID_CTE,
        order=_order_ctes(sql.SQL("FROM {}").format(_UNDER_UNPAID_CAP)),
        select=_select_order_and_wake_settlers(sql.SQL("true")),
    ),
    NewOrder,
    NewEvents,
    ReservationToken,
    UnpaidCap,
)
# The usual order, without coupon or Idempotency-Key: one statement in autocommit (one round
# trip, its own commit), each app's part in that app's own SQL. Fenced by the stock epoch and
# the quoted prices. Asynchronously: the order and its sale; a settler pays it later.
ACCEPT_ORDER = Statement.compose(
    "accept_order",
    sql.SQL("WITH fence AS ({fence}), {unpaid}{order}, {sale}{select}").format(
        fence=EPOCH_AND_PRICES_FENCE,
        unpaid=_UNPAID_CTE,
        order=_order_ctes(sql.SQL("FROM fence, {}").format(_UNDER_UNPAID_CAP)),
        sale=stock_sale_ctes(source=_NEW_ORDER, reference=_NEW_ORDER_REFERENCE),
        select=_select_order_and_wake_settlers(_FENCE_HOLDS),
    ),
    NewOrder,
    NewEvents,
    ReservationToken,
    StockEpoch,
    StockSale,
    QuotedPrices,
    UnpaidCap,
)
# Synchronously: also the payment, the balance under its version check and its ledger entry.
# Everything hangs on `changed`: if the version moved, the balance is short or the fence fails,
# nothing is written, and the first columns say which.
PAY_ORDER = Statement.compose(
    "pay_order",
    sql.SQL("""WITH fence AS ({fence}), {change}, {order}, {sale}, {payment}, {entry}
SELECT current.balance, EXISTS (SELECT 1 FROM fence), new_order.id, new_order.created_at
FROM current LEFT JOIN new_order ON true""").format(
        fence=EPOCH_AND_PRICES_FENCE,
        change=balance_change_ctes(guard=sql.Identifier("fence")),
        order=_order_ctes(sql.SQL("FROM changed")),
        sale=stock_sale_ctes(source=_NEW_ORDER, reference=_NEW_ORDER_REFERENCE),
        payment=payment_insert_cte(source=_NEW_ORDER, order_id=sql.Identifier("new_order", "id")),
        entry=balance_entry_cte(source=_NEW_ORDER, reference=_NEW_ORDER_REFERENCE),
    ),
    NewOrder,
    NewEvents,
    ReservationToken,
    StockEpoch,
    StockSale,
    QuotedPrices,
    NewPayment,
    BalanceChange,
)


# --- The status machine's move ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Move(SqlParams):
    """The compare-and-set of one order's status."""

    order_id: int
    from_status: str
    to_status: str


@dataclass(frozen=True, slots=True)
class MovedAmounts(SqlParams):
    """The amounts a move sets besides the status (None: left as they are)."""

    discount_amount: int | None = None
    paid_amount: int | None = None


MOVABLE_FIELDS = ("discount_amount", "paid_amount")


def _move(assigned: tuple[str, ...]) -> Statement:
    """The status change and its events in one statement: no change without its event, and the
    compare-and-set on the current status makes a concurrent move lose cleanly."""
    assignments = sql.SQL("").join(
        sql.SQL(", {} = {}").format(sql.Identifier(name), MovedAmounts.placeholder(name)) for name in assigned
    )
    return Statement.compose(
        "move" + "".join(f"_{name}" for name in assigned),
        sql.SQL("""
WITH moved AS (
    UPDATE {order} SET status = {to_status}, updated_at = now(){assignments}
    WHERE id = {order_id} AND status = {from_status}
    RETURNING id
){events}""").format(
            order=_ORDER,
            to_status=Move.placeholder("to_status"),
            assignments=assignments,
            order_id=Move.placeholder("order_id"),
            from_status=Move.placeholder("from_status"),
            events=events_insert(order_id=sql.Identifier("moved", "id"), source=sql.Identifier("moved")),
        ),
        Move,
        MovedAmounts,
        NewEvents,
    )


# One statement for each set of amounts a move may set (names in MOVABLE_FIELDS' order).
MOVES: dict[tuple[str, ...], Statement] = {
    assigned: _move(assigned)
    for size in range(len(MOVABLE_FIELDS) + 1)
    for assigned in combinations(MOVABLE_FIELDS, size)
}


# --- Settlement (orders/settlement.py) --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claim(SqlParams):
    """`limit` pending orders, `only` these (None: any), never those in `skip`."""

    only: list[int] | None
    skip: list[int]
    limit: int


# The oldest first, skipping orders another transaction holds (a settler, a cancel, expiry).
# The partial index orders_order_pending keeps this cheap however many orders were settled
# (PENDING_SQL is literal text on purpose: orders/models.py).
SETTLE_CLAIM = Statement.compose(
    "settle_claim",
    sql.SQL("""
SELECT id, user_id, total_amount, discount_amount, coupon_code,
       EXTRACT(EPOCH FROM clock_timestamp() - created_at)::float8
FROM {order}
WHERE {pending} AND ({only}::bigint[] IS NULL OR id = ANY({only}::bigint[]))
  AND id <> ALL({skip}::bigint[])
ORDER BY id LIMIT {limit} FOR UPDATE SKIP LOCKED
""").format(
        order=_ORDER,
        pending=sql.SQL(PENDING_SQL),
        only=Claim.placeholder("only"),
        skip=Claim.placeholder("skip"),
        limit=Claim.placeholder("limit"),
    ),
    Claim,
)


@dataclass(frozen=True, slots=True)
class MarkPaid(SqlParams):
    """The claimed orders paid (JSON: id, amount), from status `pending` to `paid`."""

    paid: str
    pending: str
    orders: str


# The paid orders moved and their events (payment started, paid) written, in one round trip.
# The rows are locked by the claim, so every one of them still is PENDING_PAYMENT.
SETTLE_MARK_PAID = Statement.compose(
    "settle_mark_paid",
    sql.SQL("""
WITH paid AS (
    UPDATE {order} AS o SET status = {paid}, paid_amount = paid.amount, updated_at = now()
    FROM jsonb_to_recordset({orders}::jsonb) AS paid(id bigint, amount bigint)
    WHERE o.id = paid.id AND o.status = {pending}
    RETURNING o.id
), new_events AS ({events})
SELECT count(*) FROM paid
""").format(
        order=_ORDER,
        paid=MarkPaid.placeholder("paid"),
        orders=MarkPaid.placeholder("orders"),
        pending=MarkPaid.placeholder("pending"),
        events=events_insert(order_id=sql.SQL("(event.value->>'orderId')::bigint")),
    ),
    MarkPaid,
    NewEvents,
)

# --- The intake's batch (orders/settlement.py): accepted orders written at last ------------------


@dataclass(frozen=True, slots=True)
class AcceptedBatch(SqlParams):
    """The orders of a batch (JSON: id, user_id, total, token, created_at) and their items
    (JSON: order_id, product_id, quantity, unit_price)."""

    pending: str
    orders: str
    items: str


# The batch's orders PENDING_PAYMENT with their items, events and sales, fenced by the stock
# epoch the batch was claimed under; order.created carries the time the intake accepted the
# order (the progress' "reserved", and time to PAID measured from the 202). An order already
# written (its entry delivered again) is skipped by its id. The settler pays them next, in the
# same transaction.
INTAKE_INSERT = Statement.compose(
    "intake_insert",
    sql.SQL("""
WITH fence AS ({fence}), new_orders AS (
    INSERT INTO {order} (id, user_id, status, total_amount, discount_amount, paid_amount, coupon_code,
                         reservation_token, created_at, updated_at)
    SELECT o.id, o.user_id, {pending}, o.total, 0, 0, '', o.token, o.created_at, now()
    FROM fence, jsonb_to_recordset({orders}::jsonb)
        AS o(id bigint, user_id bigint, total bigint, token uuid, created_at timestamptz)
    ON CONFLICT (id) DO NOTHING
    RETURNING id, reservation_token AS token, created_at
), items AS (
    INSERT INTO {item} (order_id, product_id, quantity, unit_price)
    SELECT item.order_id, item.product_id, item.quantity, item.unit_price
    FROM jsonb_to_recordset({items}::jsonb) AS item(order_id bigint, product_id bigint, quantity int, unit_price bigint)
    JOIN new_orders ON new_orders.id = item.order_id
), new_events AS (
    INSERT INTO {event} (event_id, order_id, type, payload, created_at)
    SELECT gen_random_uuid(), new_orders.id, event.value->>'type', event.value->'payload', new_orders.created_at
    FROM jsonb_array_elements({events}::jsonb) WITH ORDINALITY AS event(value, position)
    JOIN new_orders ON new_orders.id = (event.value->>'orderId')::bigint
    ORDER BY event.position
), {sales}
SELECT EXISTS (SELECT 1 FROM fence), (SELECT array_agg(id) FROM new_orders)
""").format(
        fence=EPOCH_FENCE,
        order=_ORDER,
        item=_ITEM,
        event=_EVENT,
        pending=AcceptedBatch.placeholder("pending"),
        orders=AcceptedBatch.placeholder("orders"),
        items=AcceptedBatch.placeholder("items"),
        events=NewEvents.placeholder("events"),
        sales=stock_sales_ctes(source=sql.Identifier("new_orders")),
    ),
    AcceptedBatch,
    NewEvents,
    StockEpoch,
    StockSales,
)

# The order path's statements, by the name of their file in orders/sql/.
ORDER_PATH_STATEMENTS: tuple[Statement, ...] = (
    PAY_ORDER,
    ACCEPT_ORDER,
    INSERT_ORDER,
    INSERT_PENDING_ORDER,
    *MOVES.values(),
    EVENTS_RECORD,
    SETTLE_CLAIM,
    SETTLE_MARK_PAID,
    INTAKE_INSERT,
)
