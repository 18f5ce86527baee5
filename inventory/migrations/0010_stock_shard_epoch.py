"""The stock epoch per shard: a table where the one sequence was. The sequence's value becomes the
row of the single Redis' shard (tag ""), so reservations in flight keep their fence."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("inventory", "0009_stock_epoch_logged_exactly")]

    operations = [
        migrations.CreateModel(
            name="StockShardEpoch",
            fields=[
                ("tag", models.CharField(max_length=32, primary_key=True, serialize=False)),
                ("epoch", models.BigIntegerField()),
            ],
            options={"db_table": "inventory_stock_shard"},
        ),
        migrations.RunSQL(
            "INSERT INTO inventory_stock_shard (tag, epoch) SELECT '', last_value FROM inventory_stock_epoch;"
            " DROP SEQUENCE inventory_stock_epoch;",
            reverse_sql="CREATE SEQUENCE inventory_stock_epoch;"
            " SELECT setval('inventory_stock_epoch', (SELECT epoch FROM inventory_stock_shard WHERE tag = ''));",
        ),
    ]
