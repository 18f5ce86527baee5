"""The order's price fence reads the quoted products by their key, whatever the catalogue's size."""

import pytest
from django.db import connection

from inventory.models import Product
from inventory.queries import EPOCH_AND_PRICES_FENCE_SQL, quoted_prices_params

pytestmark = pytest.mark.django_db


def test_the_price_fence_looks_products_up_by_id_rather_than_scanning_the_catalogue():
    Product.objects.bulk_create(Product(name=f"Product {i}", price=1) for i in range(5_000))
    quoted = dict.fromkeys(Product.objects.order_by("id").values_list("id", flat=True)[:3], 1)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE inventory_product")  # the planner sees the catalogue as it is
        cursor.execute(
            f"EXPLAIN SELECT 1 WHERE EXISTS ({EPOCH_AND_PRICES_FENCE_SQL})",
            {"stock_epochs": '{"": 1}', "stock_shards": 1, **quoted_prices_params(prices=quoted)},
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())

    assert "Seq Scan on inventory_product" not in plan, plan
    assert "inventory_product_pkey" in plan, plan
