"""Drop Django's automatic indexes on idempotencyrecord.user, order.user, orderevent.order and
orderitem.order: a unique constraint or composite index leading with the same column serves
their lookups. CONCURRENTLY and outside a transaction, so no lock stops orders while it runs;
the model state changes as AlterField says, without re-adding (and re-checking) the foreign
keys."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("orders", "0002_orderevent"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="idempotencyrecord",
                    name="user",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                migrations.AlterField(
                    model_name="order",
                    name="user",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="orders",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                migrations.AlterField(
                    model_name="orderevent",
                    name="order",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="events",
                        to="orders.order",
                    ),
                ),
                migrations.AlterField(
                    model_name="orderitem",
                    name="order",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="items",
                        to="orders.order",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    'DROP INDEX CONCURRENTLY IF EXISTS "orders_idempotencyrecord_user_id_c58b4115"',
                    reverse_sql='CREATE INDEX CONCURRENTLY IF NOT EXISTS "orders_idempotencyrecord_user_id_c58b4115" ON "orders_idempotencyrecord" ("user_id")',
                ),
                migrations.RunSQL(
                    'DROP INDEX CONCURRENTLY IF EXISTS "orders_order_user_id_e9b59eb1"',
                    reverse_sql='CREATE INDEX CONCURRENTLY IF NOT EXISTS "orders_order_user_id_e9b59eb1" ON "orders_order" ("user_id")',
                ),
                migrations.RunSQL(
                    'DROP INDEX CONCURRENTLY IF EXISTS "orders_orderevent_order_id_b26297f3"',
                    reverse_sql='CREATE INDEX CONCURRENTLY IF NOT EXISTS "orders_orderevent_order_id_b26297f3" ON "orders_orderevent" ("order_id")',
                ),
                migrations.RunSQL(
                    'DROP INDEX CONCURRENTLY IF EXISTS "orders_orderitem_order_id_fe61a34d"',
                    reverse_sql='CREATE INDEX CONCURRENTLY IF NOT EXISTS "orders_orderitem_order_id_fe61a34d" ON "orders_orderitem" ("order_id")',
                ),
            ],
        ),
    ]
