"""POST /api/v1/auth/token: a token for a username and password, one password check, rate limited."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework.test import APIClient

from accounts.models import ApiToken, User
from accounts.services import user_create
from devtools.testing import password_hash

pytestmark = pytest.mark.django_db

URL = "/api/v1/auth/token"


def login(username: str, password: str, *, client_ip: str = "127.0.0.1", client: APIClient | None = None):
    return (client or APIClient()).post(URL, {"username": username, "password": password}, format="json",
                                        REMOTE_ADDR=client_ip)  # fmt: skip


@pytest.fixture
def one_window(settings):
    """The attempts of a rate-limit test all fall in one fixed window: if the current one ends
    within 10 s, wait for the next to begin."""
    window = settings.LOGIN_RATE_LIMIT_WINDOW_SECONDS
    left = window - time.time() % window
    if left < 10:
        time.sleep(left + 0.01)


@pytest.fixture
def alice():
    return user_create(username="alice", password=password_hash("correct horse"))


def test_a_login_returns_a_token_that_works_and_expires_in_the_configured_lifetime(alice, settings):
    response = login("alice", "correct horse")

    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == {"token", "expiresAt"}
    expires_at = parse_datetime(body["expiresAt"])
    lifetime = timedelta(days=settings.TOKEN_LIFETIME_DAYS)
    assert timezone.now() + lifetime - timedelta(minutes=1) < expires_at <= timezone.now() + lifetime
    me = APIClient()
    me.credentials(HTTP_AUTHORIZATION=f"Bearer {body['token']}")
    assert me.get("/api/v1/accounts/me").json()["userId"] == alice.id
    assert ApiToken.objects.get().user_id == alice.id


def test_a_login_ignores_a_stale_token_in_its_authorization_header(alice):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer revoked-long-ago")

    assert login("alice", "correct horse", client=client).status_code == 201


@pytest.mark.parametrize(
    "username, password",
    [("alice", "wrong"), ("nobody", "correct horse"), ("ALICE", "correct horse"), ("inactive", "correct horse")],
)
def test_wrong_credentials_get_one_answer_that_does_not_say_which_part_was_wrong(alice, username, password):
    user_create(username="inactive", password=password_hash("correct horse"), is_active=False)

    response = login(username, password)

    assert response.status_code == 401
    assert response.json() == {
        "error": {
            "code": "INVALID_CREDENTIALS",
            "message": "The username and password do not match an active account.",
            "details": {},
        }
    }
    assert not ApiToken.objects.exists()


def test_one_password_check_per_login(alice, monkeypatch):
    checks = []
    original = User.check_password
    monkeypatch.setattr(User, "check_password", lambda user, raw: checks.append(raw) or original(user, raw))

    login("alice", "correct horse")
    login("alice", "wrong")

    assert checks == ["correct horse", "wrong"]


def test_too_many_attempts_for_one_username_get_429_with_retry_after_even_with_the_right_password(
    alice, settings, one_window
):
    settings.LOGIN_RATE_LIMIT_PER_USERNAME = 3
    for i in range(3):  # from three addresses: the username's limit, not the address's
        assert login("alice", "wrong", client_ip=f"10.0.0.{i}").status_code == 401

    response = login("alice", "correct horse", client_ip="10.0.0.99")

    assert response.status_code == 429
    assert response.json()["error"]["code"] == "RATE_LIMITED"
    assert response.json()["error"]["details"] == {"scope": "username", "limit": 3, "windowSeconds": 60}
    assert 1 <= int(response["Retry-After"]) <= 60
    assert not ApiToken.objects.exists()
    assert login("bob", "anything", client_ip="10.0.0.99").status_code == 401  # other usernames still try


def test_too_many_attempts_from_one_address_get_429(alice, settings, one_window):
    settings.LOGIN_RATE_LIMIT_PER_IP = 4
    for i in range(4):
        assert login(f"guess{i}", "wrong", client_ip="10.9.9.9").status_code == 401

    response = login("alice", "correct horse", client_ip="10.9.9.9")

    assert response.status_code == 429
    assert response.json()["error"]["details"]["scope"] == "ip"
    assert 1 <= int(response["Retry-After"]) <= 60
    assert login("alice", "correct horse", client_ip="10.9.9.10").status_code == 201


@pytest.mark.parametrize(
    "body, content_type, status, code",
    [
        (b'{"username": "alice", "password": ', "application/json", 400, "VALIDATION_ERROR"),
        (b"[]", "application/json", 400, "VALIDATION_ERROR"),
        (b'"alice"', "application/json", 400, "VALIDATION_ERROR"),
        (b"{}", "application/json", 400, "VALIDATION_ERROR"),
        (b'{"username": "alice"}', "application/json", 400, "VALIDATION_ERROR"),
        (b'{"username": "alice", "password": null}', "application/json", 400, "VALIDATION_ERROR"),
        (b'{"username": {"$ne": ""}, "password": "x"}', "application/json", 400, "VALIDATION_ERROR"),
        (b'{"username": "alice", "password": ["correct horse"]}', "application/json", 400, "VALIDATION_ERROR"),
        (b'{"username": "' + b"a" * 151 + b'", "password": "x"}', "application/json", 400, "VALIDATION_ERROR"),
        (b'{"username": "alice", "password": "' + b"p" * 1025 + b'"}', "application/json", 400, "VALIDATION_ERROR"),
        (b"username=alice&password=correct+horse", "application/x-www-form-urlencoded", 415,
         "UNSUPPORTED_MEDIA_TYPE"),
    ],
)  # fmt: skip
def test_bad_input_gets_a_json_4xx_and_no_token(alice, body, content_type, status, code):
    response = APIClient().generic("POST", URL, body, content_type=content_type)

    assert response.status_code == status, response.content
    assert response.json()["error"]["code"] == code
    assert not ApiToken.objects.exists()


def test_the_token_endpoints_are_in_the_openapi_schema():
    schema = APIClient().get("/api/schema", HTTP_ACCEPT="application/json").json()

    operations = schema["paths"]["/api/v1/auth/token"]
    assert set(operations) >= {"post", "delete"}
    # Every answer a login gives (kernel/schema.py adds what the framework answers for any body).
    assert set(operations["post"]["responses"]) == {"201", "400", "401", "406", "413", "415", "429", "431", "503"}
    assert "security" not in operations["post"] and "security" not in schema  # a login needs no token
    assert {"bearerAuth": []} in operations["delete"]["security"]
