"""The settlers' queue: a partial index of the orders still PENDING_PAYMENT, so claiming the
oldest costs an index probe however many orders were paid before. CONCURRENTLY, outside a
transaction, so building it never stops orders."""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("orders", "0003_drop_indexes_covered_by_composites")]

    operations = [
        AddIndexConcurrently(
            model_name="order",
            index=models.Index(
                condition=models.Q(status="PENDING_PAYMENT"), fields=["id"], name="orders_order_pending"
            ),
        ),
    ]
