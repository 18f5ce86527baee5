"""The stock epoch survives a PostgreSQL crash unchanged: a jump would fence off every sale
(each Redis reservation carries the epoch it was made under) until the next rebuild."""

from __future__ import annotations

import pytest
from django.db import connection

from config import local
from devtools import devservers
from inventory.reservations import stock_epoch, stock_epoch_bump
from inventory.shards import stock_shards

(ONLY_SHARD,) = stock_shards()  # one Redis, one shard

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.mark.skipif(
    not local.uses_own_database(),
    reason="restarts PostgreSQL: only the project's own server (DATABASE_URL unset)",
)
def test_the_stock_epoch_is_the_same_after_postgresql_crashes():
    bumped = stock_epoch_bump(ONLY_SHARD)
    assert stock_epoch(ONLY_SHARD) == bumped

    connection.close()
    devservers.stop_postgres(mode="immediate")  # a crash: recovery replays the WAL
    devservers.start_postgres()

    # The epoch was a sequence once: bumped with nextval() it came back up to 32 values ahead
    # (PostgreSQL logs sequences ahead of use), and every reservation made under `bumped` was refused.
    assert stock_epoch(ONLY_SHARD) == bumped
