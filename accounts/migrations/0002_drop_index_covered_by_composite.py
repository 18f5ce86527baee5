"""Drop Django's automatic index on balanceentry.account: the (account, -id) index serves its
lookups. CONCURRENTLY and outside a transaction, so it takes no lock that stops writes; the
model state changes as AlterField says, without re-adding (and re-checking) the foreign key."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("accounts", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="balanceentry",
                    name="account",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="entries",
                        to="accounts.account",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    'DROP INDEX CONCURRENTLY IF EXISTS "accounts_balanceentry_account_id_d98213fd"',
                    reverse_sql='CREATE INDEX CONCURRENTLY IF NOT EXISTS "accounts_balanceentry_account_id_d98213fd" '
                    'ON "accounts_balanceentry" ("account_id")',
                ),
            ],
        ),
    ]
