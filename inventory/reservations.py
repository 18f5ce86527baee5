"""A reservation's fate in the database, and the stock epoch: what orders, adjustments and
reconciliation all decide a reservation by.

A reservation made in Redis ends SOLD (its order's transaction inserts the row) or RELEASED (a
failed order or reconciliation inserts it); the row's primary key makes the two mutually
exclusive. The epoch is the generation of a shard's counts in Redis (inventory/queries.py
StockEpoch, inventory/shards.py).
"""

from __future__ import annotations

from django.db import connection

from inventory.models import StockReservation
from inventory.shards import StockShard
from kernel.database import sql_one

# The row is made by the shard's first read: a shard's epoch exists before anything is reserved
# under it. The bump runs under the reconciliation lock, one at a time; it takes the row's lock,
# which an order's fence (a plain read) never waits for.
_EPOCH_SQL = (
    "WITH made AS (INSERT INTO inventory_stock_shard (tag, epoch) VALUES (%(tag)s, 1) "
    "ON CONFLICT (tag) DO NOTHING RETURNING epoch) "
    "SELECT epoch FROM made UNION ALL SELECT epoch FROM inventory_stock_shard WHERE tag = %(tag)s"
)
_EPOCH_BUMP_SQL = (
    "INSERT INTO inventory_stock_shard (tag, epoch) VALUES (%(tag)s, 1) "
    "ON CONFLICT (tag) DO UPDATE SET epoch = inventory_stock_shard.epoch + 1 RETURNING epoch"
)


def stock_epoch(shard: StockShard) -> int:
    (epoch,) = sql_one(_EPOCH_SQL, {"tag": shard.tag})
    return epoch


def stock_epoch_bump(shard: StockShard) -> int:
    """A new epoch for the shard (a rebuild's fence: reservations made on it before can no longer
    be recorded)."""
    (epoch,) = sql_one(_EPOCH_BUMP_SQL, {"tag": shard.tag})
    return epoch


def stock_epochs_fence_other_layouts(shards: tuple[StockShard, ...]) -> int:
    """Bump the epoch of every shard that is not one of `shards` (those of another STOCK_SHARDS,
    or the one shard of a single Redis while stock is sharded); returns how many. Its keys, if
    that layout serves again, show an older epoch: reconciliation rebuilds them instead of
    trusting counts that stood still while this layout sold, and any sale reserved on them is
    fenced off meanwhile (a process still running with the old layout, say)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE inventory_stock_shard SET epoch = epoch + 1 WHERE NOT (tag = ANY(%s))", [[s.tag for s in shards]]
        )
        return cursor.rowcount


def reservation_mark_released(token: str) -> bool:
    """Mark the reservation RELEASED unless it was SOLD; True if it is RELEASED now."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO inventory_stockreservation (token, state, created_at) VALUES (%s, %s, now()) "
            "ON CONFLICT (token) DO NOTHING",
            [token, StockReservation.State.RELEASED],
        )
        cursor.execute("SELECT state FROM inventory_stockreservation WHERE token = %s", [token])
        return cursor.fetchone()[0] == StockReservation.State.RELEASED
