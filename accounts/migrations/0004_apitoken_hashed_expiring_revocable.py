"""API tokens: only the SHA-256 of each token is kept, with an expiry and a revocation time.

The tokens already handed out keep working: their stored keys are replaced by their hashes in
one statement (PostgreSQL's built-in sha256(), v11+), and they get TOKEN_LIFETIME_DAYS from
now. The table gets a surrogate id, so the admin's URLs carry no hash of a token. Going back
cannot recover a token from its hash: it drops the tokens.
"""

from django.conf import settings
from django.db import migrations, models

_HASH_EXISTING_SQL = """
UPDATE accounts_apitoken
SET key_hash = encode(sha256(convert_to(key_hash, 'UTF8')), 'hex'),
    expires_at = now() + make_interval(days => %s)
"""


def hash_existing_tokens(apps, schema_editor):
    schema_editor.execute(_HASH_EXISTING_SQL, [settings.TOKEN_LIFETIME_DAYS])


def drop_tokens(apps, schema_editor):
    schema_editor.execute("DELETE FROM accounts_apitoken")


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0003_adjust_permission"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="apitoken",
            options={"permissions": [("revoke_apitoken", "Can revoke API tokens")]},
        ),
        migrations.AddField(model_name="apitoken", name="expires_at", field=models.DateTimeField(null=True)),
        migrations.AddField(
            model_name="apitoken", name="revoked_at", field=models.DateTimeField(blank=True, null=True)
        ),
        migrations.RenameField(model_name="apitoken", old_name="key", new_name="key_hash"),
        migrations.RunPython(hash_existing_tokens, drop_tokens),
        migrations.AlterField(model_name="apitoken", name="expires_at", field=models.DateTimeField()),
        migrations.AlterField(
            model_name="apitoken",
            name="key_hash",
            field=models.CharField(help_text="SHA-256 hex of the token.", max_length=64),
        ),
        # The primary key's LIKE index, which Django leaves behind: nothing searches hashes by prefix.
        migrations.RunSQL(
            'DROP INDEX IF EXISTS "accounts_apitoken_key_721b812a_like"',
            reverse_sql='CREATE INDEX IF NOT EXISTS "accounts_apitoken_key_721b812a_like" '
            'ON "accounts_apitoken" ("key_hash" varchar_pattern_ops)',
        ),
        migrations.AddConstraint(
            model_name="apitoken",
            constraint=models.UniqueConstraint(fields=["key_hash"], name="accounts_apitoken_key_hash_unique"),
        ),
        migrations.AddField(
            model_name="apitoken",
            name="id",
            field=models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID"),
        ),
    ]
