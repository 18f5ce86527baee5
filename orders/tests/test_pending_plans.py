"""The statements that look for unpaid orders are served by the partial index on them in a
generic plan too (what a prepared statement runs after a few executions), however many
settled orders the table holds."""

import re

import pytest
from django.db import connection

from loadtest.seeding import SeedShape, seed
from orders.backlog import _OLDEST_PENDING_SQL
from orders.metrics import _BACKLOG_SQL
from orders.queries import SETTLE_CLAIM

_CLAIM_SQL = SETTLE_CLAIM.text

pytestmark = pytest.mark.django_db(transaction=True)


def _generic_plan(sql: str) -> str:
    """EXPLAIN (GENERIC_PLAN): the plan made without the parameters' values ($1, $2, ...)."""
    names = iter(range(1, 100))
    positional = re.sub(r"%\((\w+)\)s|%s", lambda _: f"${next(names)}", sql)
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (GENERIC_PLAN) {positional}")
        return "\n".join(row[0] for row in cursor.fetchall())


@pytest.mark.slow
@pytest.mark.parametrize(
    "sql", [_OLDEST_PENDING_SQL, _BACKLOG_SQL, _CLAIM_SQL], ids=["backlog gate", "backlog gauge", "settler claim"]
)
def test_unpaid_orders_are_found_through_their_partial_index_in_a_generic_plan(sql):
    seed(SeedShape(users=50, products=3, orders=20_000))  # settled history, nothing unpaid
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE orders_order")

    plan = _generic_plan(sql)

    assert "orders_order_pending" in plan, plan
