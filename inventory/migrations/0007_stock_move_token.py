"""Positive stock moves (returns, restocks) carry a token, applied at most once in Redis, and are
pending until reconciliation has seen them applied (issue 19). A nullable column: added without
rewriting the ledger."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("inventory", "0006_stockreservation_created_at_index")]

    operations = [
        migrations.AddField(
            model_name="stockmovement",
            name="move_token",
            field=models.UUIDField(blank=True, null=True),
        ),
        migrations.CreateModel(
            name="PendingMove",
            fields=[
                ("token", models.UUIDField(primary_key=True, serialize=False)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
        ),
    ]
