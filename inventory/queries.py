"""Inventory's SQL on the order path: the stock epoch fence, the quoted-prices fence and the
sale of a reservation, as fragments an order's statement composes (orders/queries.py), and the
sale inventory records on its own. Composed with psycopg.sql and rendered once at import; each
fragment's parameters are one SqlParams class. The statements as PostgreSQL runs them are in
orders/sql/*.sql (kept by orders/tests/test_sql_golden.py).

Why SQL at all: an order writes its sale in its own statement, one round trip with the order
(orders/tests/test_round_trips.py counts them)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
from psycopg import sql

from inventory.models import Product, StockMovement, StockReservation, StockShardEpoch
from kernel.database import SqlParams, Statement

if TYPE_CHECKING:
    from inventory.services import Reservation

STOCK_SHARD = sql.Identifier(StockShardEpoch._meta.db_table)
_PRODUCT = sql.Identifier(Product._meta.db_table)
_RESERVATION = sql.Identifier(StockReservation._meta.db_table)
_MOVEMENT = sql.Identifier(StockMovement._meta.db_table)


@dataclass(frozen=True, slots=True)
class ReservationToken(SqlParams):
    """A Redis reservation's token: the SOLD row's key, and the reservation_token of the order
    that holds it (one value for both, in a statement that writes both)."""

    prefix = "stock_"
    token: uuid.UUID


@dataclass(frozen=True, slots=True)
class StockEpoch(SqlParams):
    """The epoch of each shard a reservation was made on (EPOCH_FENCE): a JSON object, shard tag
    -> epoch, and how many shards."""

    prefix = "stock_"
    epochs: str
    shards: int

    @classmethod
    def of(cls, epochs: dict[str, int]) -> StockEpoch:
        return cls(epochs=orjson.dumps(epochs).decode(), shards=len(epochs))


@dataclass(frozen=True, slots=True)
class StockSale(SqlParams):
    """What a sale writes beside the reservation's token: the SOLD state, the ledger rows' kind,
    reason, holder and the units (a JSON object, product id -> units)."""

    prefix = "stock_"
    sold: str
    kind: str
    reason: str
    holder: int | None
    quantities: str

    @classmethod
    def of(
        cls,
        *,
        reservation: Reservation,
        quantities: dict[int, int],
        kind: str = StockMovement.Kind.SALE,
        reason: str = "",
    ) -> StockSale:
        return cls(
            sold=StockReservation.State.SOLD,
            kind=kind,
            reason=reason,
            holder=reservation.holder,
            quantities=orjson.dumps(quantities, option=orjson.OPT_NON_STR_KEYS).decode(),
        )


@dataclass(frozen=True, slots=True)
class QuotedPrices(SqlParams):
    """The prices the caller was quoted: a JSON object (product id -> price), its ids, how many."""

    prefix = "quoted_"
    prices: str
    ids: list[int]
    count: int

    @classmethod
    def of(cls, prices: dict[int, int]) -> QuotedPrices:
        return cls(
            prices=orjson.dumps(prices, option=orjson.OPT_NON_STR_KEYS).decode(), ids=list(prices), count=len(prices)
        )


@dataclass(frozen=True, slots=True)
class LedgerReference(SqlParams):
    """The ledger rows' reference, when a statement records a sale on its own."""

    reference: str


# The generation of each shard's counts in Redis. A rebuild of a shard from the database (after
# Redis lost its data) bumps the shard's epoch before it waits for older transactions, and a
# reservation's units are recorded only while the epoch of every shard it holds units on is still
# the one they were reserved under: a statement that read the old epoch began before the bump,
# so the rebuild waits for it and counts its sale; one that reads the new epoch records nothing.
# The shards' table is a few rows, read whole; the bump's row lock never makes this read wait.
EPOCH_FENCE = sql.SQL("""SELECT 1 WHERE (
    SELECT count(*) FROM {shard} AS shard WHERE shard.epoch = ({epochs}::jsonb ->> shard.tag)::bigint
) = {shards}""").format(
    shard=STOCK_SHARD, epochs=StockEpoch.placeholder("epochs"), shards=StockEpoch.placeholder("shards")
)
# The same fence, and the prices the caller was quoted still the database's: every product
# exists, is on sale and costs what the order will charge (prices_for_order's checks, read in
# the order's own statement, so an order that skipped prices_for_order never charges a stale
# price, and saves that round trip). Parameters: StockEpoch, QuotedPrices.
# The products are looked up by id (an array, which the planner sizes): joined to the quoted
# prices as a set-returning function, which it guesses at 100 rows, the products were scanned
# whole, 1 ms an order at 10,000 of them.
EPOCH_AND_PRICES_FENCE = sql.SQL("""{epoch_fence} AND (
    SELECT count(*) FROM {product} AS product
    WHERE product.id = ANY({ids}::bigint[]) AND product.active
      AND product.price = ({prices}::jsonb ->> product.id::text)::bigint
) = {count}""").format(
    epoch_fence=EPOCH_FENCE,
    product=_PRODUCT,
    ids=QuotedPrices.placeholder("ids"),
    prices=QuotedPrices.placeholder("prices"),
    count=QuotedPrices.placeholder("count"),
)
# Rendered, for a plan test (inventory/tests/test_price_fence_plan.py).
EPOCH_AND_PRICES_FENCE_SQL = EPOCH_AND_PRICES_FENCE.as_string(None)


def stock_sale_ctes(*, source: sql.Identifier, reference: sql.Composable) -> sql.Composed:
    """The CTEs `settled` and `movements` that record the reservation (ReservationToken, StockSale)
    once per row of the CTE `source`, the ledger reference being the SQL expression `reference`.

    For a statement that writes the sale together with what it was sold for (an order): the
    caller makes `source` depend on EPOCH_FENCE. The SOLD row's primary key makes a sale and a
    reconciliation release mutually exclusive (the statement fails with IntegrityError)."""
    return sql.SQL("""
settled AS (
    INSERT INTO {reservation} (token, state, created_at)
    SELECT {token}, {sold}, now() FROM {source}
    RETURNING token
), movements AS (
    INSERT INTO {movement} (product_id, quantity, kind, reference, reason, holder, created_at)
    SELECT item.key::bigint, -item.value::bigint, {kind}, {reference}, {reason},
           {holder}::bigint, now()
    FROM {source}, settled, jsonb_each_text({quantities}::jsonb) AS item
    RETURNING 1
)""").format(
        reservation=_RESERVATION,
        movement=_MOVEMENT,
        source=source,
        reference=reference,
        token=ReservationToken.placeholder("token"),
        sold=StockSale.placeholder("sold"),
        kind=StockSale.placeholder("kind"),
        reason=StockSale.placeholder("reason"),
        holder=StockSale.placeholder("holder"),
        quantities=StockSale.placeholder("quantities"),
    )


@dataclass(frozen=True, slots=True)
class StockSales(SqlParams):
    """Many reservations' sales at once (a settler's batch of accepted orders): a JSON array of
    {token, product_id, quantity, holder, reference}, one element per product of a reservation."""

    prefix = "stock_"
    sold: str
    kind: str
    sales: str


def stock_sales_ctes(*, source: sql.Identifier) -> sql.Composed:
    """The CTEs `settled` and `movements` that record every sale in StockSales whose token is in
    the column `token` of the CTE `source` (the orders the statement wrote): the SOLD rows and
    the ledger's. The caller fences `source` by EPOCH_FENCE."""
    return sql.SQL("""
sale AS (
    SELECT sale.* FROM jsonb_to_recordset({sales}::jsonb)
        AS sale(token uuid, product_id bigint, quantity bigint, holder bigint, reference text)
    JOIN {source} ON {source}.token = sale.token
), settled AS (
    INSERT INTO {reservation} (token, state, created_at)
    SELECT DISTINCT token, {sold}, now() FROM sale
    RETURNING token
), movements AS (
    INSERT INTO {movement} (product_id, quantity, kind, reference, reason, holder, created_at)
    SELECT sale.product_id, -sale.quantity, {kind}, sale.reference, '', sale.holder, now()
    FROM sale
    RETURNING 1
)""").format(
        reservation=_RESERVATION,
        movement=_MOVEMENT,
        source=source,
        sales=StockSales.placeholder("sales"),
        sold=StockSales.placeholder("sold"),
        kind=StockSales.placeholder("kind"),
    )


# A reservation's units recorded on their own (a sale inside an order's transaction, or an
# adjustment), fenced by the epoch; counts the ledger rows written (0: the epoch moved on).
RECORD_UNITS = Statement.compose(
    "record_units",
    sql.SQL("""
WITH fence AS ({fence}), {sale}
SELECT count(*) FROM movements
""").format(
        fence=EPOCH_FENCE,
        sale=stock_sale_ctes(source=sql.Identifier("fence"), reference=LedgerReference.placeholder("reference")),
    ),
    ReservationToken,
    StockEpoch,
    StockSale,
    LedgerReference,
)


def quoted_prices_params(*, prices: dict[int, int]) -> dict[str, object]:
    """QuotedPrices' parameters, for a statement run by hand (a plan test)."""
    return QuotedPrices.of(prices).params()


# The price mirror's read (inventory.reconciliation.prices_mirror_load), not on the order path:
# the products' prices and whether they are on sale, their rows share-locked until the mirror is
# written (no change of them commits in between), in id order. For every product, or those of
# the parameter `ids` (a list of ids).
PRODUCTS_FOR_MIRROR_SQL = (
    sql.SQL("SELECT id, price, active FROM {product} ORDER BY id FOR SHARE").format(product=_PRODUCT).as_string(None)
)
PRODUCTS_FOR_MIRROR_BY_ID_SQL = (
    sql.SQL("SELECT id, price, active FROM {product} WHERE id = ANY({ids}) ORDER BY id FOR SHARE")
    .format(product=_PRODUCT, ids=sql.Placeholder("ids"))
    .as_string(None)
)
