"""The stock epoch: a sequence whose value names the generation of Redis' stock counts.

A sequence, not a row: a rebuild bumps it with nextval(), which every statement sees at once,
without waiting for a commit (and no test flush or TRUNCATE empties it). Started at 1."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("inventory", "0002_drop_index_covered_by_composite")]

    operations = [
        migrations.RunSQL(
            "CREATE SEQUENCE inventory_stock_epoch; SELECT nextval('inventory_stock_epoch');",
            reverse_sql="DROP SEQUENCE inventory_stock_epoch;",
        ),
    ]
