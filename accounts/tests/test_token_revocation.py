"""A password change revokes the user's tokens; a user revokes all of their own tokens at once."""

from __future__ import annotations

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher, make_password
from rest_framework.test import APIClient

from accounts.models import ApiToken, User
from accounts.services import token_create, user_create
from devtools.testing import make_user

pytestmark = pytest.mark.django_db(transaction=True)

STRONG = "a long passphrase nobody guesses"


def bearer(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


def works(key: str) -> bool:
    status = bearer(key).get("/api/v1/accounts/me").status_code
    assert status in (200, 401), status
    return status == 200


def used_tokens(user: User, count: int) -> list[str]:
    """`count` tokens of `user`, each used once (read from the Redis token map)."""
    keys = [token_create(user=user).key for _ in range(count)]
    assert all(works(key) for key in keys)
    return keys


def test_changing_a_password_revokes_every_token_of_that_user_and_no_other():
    user, other = make_user(), make_user()
    keys, others = used_tokens(user, 2), used_tokens(other, 1)

    user.set_password(STRONG)
    user.save()

    assert [works(key) for key in keys] == [False, False]
    assert works(others[0])
    assert ApiToken.objects.filter(user=user, revoked_at__isnull=True).count() == 0


def test_a_password_changed_in_the_admin_revokes_the_users_tokens(admin_client):
    user = make_user()
    (key,) = used_tokens(user, 1)

    response = admin_client.post(
        f"/admin/accounts/user/{user.id}/password/",
        {"password1": STRONG, "password2": STRONG, "usable_password": "true"},
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    assert User.objects.get(pk=user.pk).check_password(STRONG)
    assert not works(key)


def test_saving_a_user_without_a_new_password_revokes_nothing():
    user = user_create(username="alice", password=make_password(STRONG))
    (key,) = used_tokens(user, 1)

    user.first_name = "Alice"
    user.save()
    User.objects.get(pk=user.pk).check_password(STRONG)

    assert works(key)


def test_a_password_hash_upgraded_at_login_is_no_password_change():
    """Django re-hashes a password whose hasher settings changed (here: fewer iterations) when
    it checks it; the password is the same, so the user's tokens stay."""
    old_hash = PBKDF2PasswordHasher().encode(STRONG, "saltsaltsalt", iterations=1_000)
    user = user_create(username="alice", password=old_hash)
    (key,) = used_tokens(user, 1)

    login = APIClient().post("/api/v1/auth/token", {"username": "alice", "password": STRONG}, format="json")

    assert login.status_code == 201
    assert User.objects.get(pk=user.pk).password != old_hash  # upgraded
    assert works(key) and works(login.json()["token"])


def test_a_user_revokes_all_of_their_own_tokens_at_once():
    user, other = make_user(), make_user()
    keys, others = used_tokens(user, 3), used_tokens(other, 1)

    response = bearer(keys[0]).delete("/api/v1/auth/tokens")

    assert response.status_code == 204
    assert [works(key) for key in keys] == [False, False, False]
    assert works(others[0])


def test_revoking_all_tokens_needs_a_token():
    response = APIClient().delete("/api/v1/auth/tokens")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "UNAUTHENTICATED"


def test_the_revoke_all_endpoint_is_in_the_openapi_schema():
    schema = APIClient().get("/api/schema", HTTP_ACCEPT="application/json").json()

    operations = schema["paths"]["/api/v1/auth/tokens"]
    assert set(operations) == {"delete"}
    assert {"bearerAuth": []} in operations["delete"]["security"]
