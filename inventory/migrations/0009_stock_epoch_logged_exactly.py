"""The stock epoch's current value written to the WAL exactly (setval), so a crash before the
next checkpoint cannot bring back the value nextval logged ahead of use (reservations.py)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("inventory", "0008_stockmovement_move_token_index")]

    operations = [
        migrations.RunSQL(
            "SELECT setval('inventory_stock_epoch', last_value) FROM inventory_stock_epoch;",
            reverse_sql=migrations.RunSQL.noop,
        ),
    ]
