"""A partial index on stockmovement.move_token (only the rows that put units in have one), for
reconciliation's look-up of the moves Redis reports applied; built CONCURRENTLY outside a
transaction so orders go on while the ledger is scanned."""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("inventory", "0007_stock_move_token")]

    operations = [
        AddIndexConcurrently(
            model_name="stockmovement",
            index=models.Index(
                condition=models.Q(move_token__isnull=False), fields=["move_token"], name="stockmovement_move_token"
            ),
        ),
    ]
