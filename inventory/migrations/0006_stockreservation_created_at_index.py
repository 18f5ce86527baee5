"""An index on stockreservation.created_at, for the retention trim (docs/retention.md), built
CONCURRENTLY outside a transaction so orders go on while it is built."""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("inventory", "0005_purchase_limit")]

    operations = [
        AddIndexConcurrently(
            model_name="stockreservation",
            index=models.Index(fields=["created_at"], name="stockreservation_created"),
        ),
    ]
