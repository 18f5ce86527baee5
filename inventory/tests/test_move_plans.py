"""Reconciliation finds the moves it needs through the move-token index, whatever the ledger's size."""

import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from inventory.models import PendingMove, Product, StockMovement
from inventory.reconciliation import _recorded_moves, pending_moves

pytestmark = pytest.mark.django_db


def test_pending_and_applied_moves_are_looked_up_by_token_rather_than_scanning_the_ledger():
    product = Product.objects.create(name="Widget", price=1)
    StockMovement.objects.bulk_create(
        StockMovement(product=product, quantity=-1, kind=StockMovement.Kind.SALE) for _ in range(20_000)
    )
    tokens = [uuid.uuid4() for _ in range(3)]
    StockMovement.objects.bulk_create(
        StockMovement(product=product, quantity=1, kind=StockMovement.Kind.RETURN, move_token=token) for token in tokens
    )
    PendingMove.objects.bulk_create(PendingMove(token=token) for token in tokens[:2])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE inventory_stockmovement, inventory_pendingmove")  # as they are

    with CaptureQueriesContext(connection) as queries:
        assert set(pending_moves()) == {str(token) for token in tokens[:2]}
        assert _recorded_moves([str(token) for token in tokens[1:]]) == {str(token) for token in tokens[1:]}

    for query in queries.captured_queries:
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN {query['sql']}")
            plan = "\n".join(row[0] for row in cursor.fetchall())
        assert "Seq Scan on inventory_stockmovement" not in plan, plan
        assert "stockmovement_move_token" in plan, plan
