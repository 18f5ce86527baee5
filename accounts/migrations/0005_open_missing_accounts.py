from django.db import migrations

# Users made before every user got an account as it is saved (the admin's "Add user" page,
# createsuperuser) get an empty one now: an order of theirs could not be paid.
OPEN_MISSING = """
INSERT INTO accounts_account (user_id, balance, version, updated_at)
SELECT u.id, 0, 0, now() FROM accounts_user AS u
WHERE NOT EXISTS (SELECT 1 FROM accounts_account AS a WHERE a.user_id = u.id)
"""


class Migration(migrations.Migration):
    dependencies = [("accounts", "0004_apitoken_hashed_expiring_revocable")]

    operations = [migrations.RunSQL(OPEN_MISSING, migrations.RunSQL.noop)]
