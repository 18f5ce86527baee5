"""API tokens: stored as hashes, expiring, revocable by their owner and in the admin."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
import textwrap
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from django.utils import timezone
from django_redis import get_redis_connection
from rest_framework.test import APIClient

from accounts.models import ApiToken, User
from accounts.services import token_create
from accounts.tokens import TOKEN_PREFIX, token_hash
from config.local import current_database_url
from devtools.testing import free_port, make_user, wait_for
from loadtest.seeding import SeedShape, seed

pytestmark = pytest.mark.django_db(transaction=True)


def bearer(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


def assert_refused(response) -> None:
    assert response.status_code == 401, response.content
    assert response.json()["error"] == {
        "code": "UNAUTHENTICATED",
        "message": "Invalid or expired token.",
        "details": {},
    }


def test_only_the_tokens_hash_is_stored():
    issued = token_create(user=make_user())

    assert bearer(issued.key).get("/api/v1/accounts/me").status_code == 200
    assert ApiToken.objects.get().key_hash == hashlib.sha256(issued.key.encode()).hexdigest()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM accounts_apitoken AS t WHERE row_to_json(t)::text LIKE %s",
                       [f"%{issued.key}%"])  # fmt: skip
        assert cursor.fetchone()[0] == 0


def test_a_token_made_before_hashing_keeps_working_after_the_migration():
    """The migration's SQL hash (PostgreSQL's sha256) is the one the server checks (Python's)."""
    migration = importlib.import_module("accounts.migrations.0004_apitoken_hashed_expiring_revocable")
    user = make_user()
    handed_out = "a-token-from-before-the-migration"
    ApiToken.objects.create(key_hash=handed_out, user=user, expires_at=timezone.now())  # as 0002 stored it
    with connection.cursor() as cursor:
        cursor.execute(migration._HASH_EXISTING_SQL, [settings.TOKEN_LIFETIME_DAYS])

    assert bearer(handed_out).get("/api/v1/accounts/me").status_code == 200
    token = ApiToken.objects.get()
    assert token.expires_at > timezone.now() + timedelta(days=settings.TOKEN_LIFETIME_DAYS - 1)


def test_an_expired_token_is_refused():
    issued = token_create(user=make_user(), lifetime=timedelta(seconds=-1))

    assert_refused(bearer(issued.key).get("/api/v1/accounts/me"))


def test_a_mapped_token_is_refused_once_it_expires():
    issued = token_create(user=make_user(), lifetime=timedelta(seconds=3))
    client = bearer(issued.key)
    assert client.get("/api/v1/accounts/me").status_code == 200  # read from the Redis token map

    wait_for(lambda: ApiToken.objects.filter(expires_at__lt=timezone.now()).exists(), what="the token to expire")
    assert_refused(client.get("/api/v1/accounts/me"))


def test_the_owner_revokes_their_own_token_and_only_that_one():
    user = make_user()
    first, second = token_create(user=user), token_create(user=user)
    client = bearer(first.key)
    assert client.get("/api/v1/accounts/me").status_code == 200  # read from the Redis token map

    assert client.delete("/api/v1/auth/token").status_code == 204

    assert_refused(client.get("/api/v1/accounts/me"))
    assert_refused(client.delete("/api/v1/auth/token"))
    assert bearer(second.key).get("/api/v1/accounts/me").status_code == 200
    assert ApiToken.objects.get(key_hash=first.token.key_hash).revoked_at is not None


def test_revoking_needs_a_token():
    response = APIClient().delete("/api/v1/auth/token")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "UNAUTHENTICATED"


def test_a_token_revoked_in_another_process_is_refused_here_at_once():
    """No process remembers a token: the revocation deleted its entry in the Redis token map."""
    issued = token_create(user=make_user())
    client = bearer(issued.key)
    assert client.get("/api/v1/accounts/me").status_code == 200

    revoker = run_django(f"""
        from accounts.services import token_revoke
        print(token_revoke(key={issued.key!r}, user_id={issued.token.user_id}))
    """)
    assert revoker.stdout.strip() == "True", revoker.stderr

    assert_refused(client.get("/api/v1/accounts/me"))


def test_without_redis_every_token_is_looked_up_in_the_database():
    """Fail closed: a worker that cannot read the token map reads the database for every request,
    so a token revoked meanwhile (by hand here: a revocation itself needs Redis) is refused at
    once."""
    issued = token_create(user=make_user())
    checked = run_django(
        f"""
        from django.utils import timezone
        from accounts.authentication import _user_id_for
        from accounts.models import ApiToken
        first = _user_id_for({issued.key!r})
        ApiToken.objects.update(revoked_at=timezone.now())
        print(first, _user_id_for({issued.key!r}))
        """,
        redis_url=f"redis://127.0.0.1:{free_port()}/15",  # nothing listens there
    )

    assert checked.stdout.split() == [str(issued.token.user_id), "None"], checked.stderr


def run_django(code: str, *, redis_url: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, DATABASE_URL=current_database_url(), SHOP_TESTING="1")
    env["REDIS_TEST_URL"] = redis_url or settings.REDIS_URL
    setup = "import django, os\nos.environ.setdefault('DJANGO_SETTINGS_MODULE', 'config.settings')\ndjango.setup()\n"
    return subprocess.run([sys.executable, "-c", setup + textwrap.dedent(code)], cwd=settings.BASE_DIR, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_seeded_tokens_work_and_are_stored_hashed(tokens_path):
    tokens = seed(SeedShape(users=3, products=1, stock=10, balance=10))

    assert json.loads(tokens_path.read_text()) == tokens
    for user_id, key in tokens.items():
        assert bearer(key).get("/api/v1/accounts/me").json()["userId"] == int(user_id)
    stored = set(ApiToken.objects.values_list("key_hash", flat=True))
    assert stored == {hashlib.sha256(key.encode()).hexdigest() for key in tokens.values()}


@pytest.fixture
def tokens_path(tmp_path, monkeypatch):
    path = tmp_path / "tokens.json"
    monkeypatch.setattr("loadtest.seeding.TOKENS_PATH", path)
    return path


# --- The admin ------------------------------------------------------------------------------


def test_the_admin_lists_tokens_without_their_secret_and_revokes_them(admin_client):
    user = make_user()
    kept, revoked = token_create(user=user), token_create(user=user)
    assert bearer(revoked.key).get("/api/v1/accounts/me").status_code == 200  # mapped

    listing = admin_client.get("/admin/accounts/apitoken/").content.decode()
    assert revoked.token.key_hash[-8:] in listing
    assert revoked.key not in listing and revoked.token.key_hash not in listing
    assert admin_client.get(f"/admin/accounts/apitoken/{revoked.token.id}/change/").status_code == 200
    assert admin_client.get("/admin/accounts/apitoken/add/").status_code == 403

    response = admin_client.post(
        "/admin/accounts/apitoken/", {"action": "revoke", "_selected_action": [revoked.token.id]}
    )

    assert response.status_code == 302
    assert_refused(bearer(revoked.key).get("/api/v1/accounts/me"))
    assert bearer(kept.key).get("/api/v1/accounts/me").status_code == 200


def test_staff_without_the_revoke_permission_cannot_revoke():
    token = token_create(user=make_user())
    staff = User.objects.create_user(id=1_000_001, username="staff", password="pw", is_staff=True)
    staff.user_permissions.add(*_permissions("view_apitoken"))
    client = Client()
    client.login(username="staff", password="pw")

    listing = client.get("/admin/accounts/apitoken/")
    client.post("/admin/accounts/apitoken/", {"action": "revoke", "_selected_action": [token.token.id]})

    assert listing.status_code == 200 and "Revoke selected tokens" not in listing.content.decode()
    assert ApiToken.objects.get().revoked_at is None


def _permissions(*codenames):
    from django.contrib.auth.models import Permission

    return Permission.objects.filter(content_type__app_label="accounts", codename__in=codenames)


def test_deactivating_a_user_in_the_admin_kills_their_tokens(admin_client):
    user = make_user()
    key = token_create(user=user).key
    client = bearer(key)
    assert client.get("/api/v1/accounts/me").status_code == 200

    form = {"username": user.username, "date_joined_0": "2024-01-01", "date_joined_1": "00:00:00"}  # not active
    response = admin_client.post(f"/admin/accounts/user/{user.id}/change/", form)
    assert response.status_code == 302, response.content.decode()[:2000]

    assert_refused(client.get("/api/v1/accounts/me"))
    assert get_redis_connection("default").get(TOKEN_PREFIX + token_hash(key)) is None
