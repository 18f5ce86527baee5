"""A reservation's fate in the database, and the stock epoch: what orders, adjustments and
reconciliation all decide a reservation by.

A reservation made in Redis ends SOLD (its order's transaction inserts the row) or RELEASED (a
failed order or reconciliation inserts it); the row's primary key makes the two mutually
exclusive. The epoch is the generation of Redis' counts (see inventory/queries.py StockEpoch).
"""

from __future__ import annotations

from django.db import connection

from inventory.models import StockReservation
from kernel.database import sql_one

_EPOCH_SQL = "SELECT last_value FROM inventory_stock_epoch"
# setval, not nextval: nextval logs a sequence up to 32 values ahead of use, so after a crash
# the epoch came back higher and every sale made under the old one was fenced off until the next
# rebuild; setval logs the value it sets. Bumps run under the reconciliation lock, one at a time.
_EPOCH_BUMP_SQL = "SELECT setval('inventory_stock_epoch', last_value + 1) FROM inventory_stock_epoch"


def stock_epoch() -> int:
    (epoch,) = sql_one(_EPOCH_SQL, [])
    return epoch


def stock_epoch_bump() -> int:
    """A new epoch (a rebuild's fence: reservations made before it can no longer be recorded)."""
    (epoch,) = sql_one(_EPOCH_BUMP_SQL, [])
    return epoch


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
