"""Drop Django's automatic index on stockmovement.product: the (product, kind) index serves its
lookups. CONCURRENTLY and outside a transaction, so it takes no lock that stops writes; the
model state changes as AlterField says, without re-adding (and re-checking) the foreign key."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("inventory", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="stockmovement",
                    name="product",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="movements",
                        to="inventory.product",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    'DROP INDEX CONCURRENTLY IF EXISTS "inventory_stockmovement_product_id_4eccfd0a"',
                    reverse_sql='CREATE INDEX CONCURRENTLY IF NOT EXISTS "inventory_stockmovement_product_id_4eccfd0a" '
                    'ON "inventory_stockmovement" ("product_id")',
                ),
            ],
        ),
    ]
