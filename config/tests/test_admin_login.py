"""The admin's login: the API login's attempt limits, and Django's password validators."""

from __future__ import annotations

import pytest
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import User
from devtools import serve
from devtools.testing import free_port, fresh_login_window, run_in_django_process

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/"


@pytest.fixture
def admin_user():
    return User.objects.create_superuser(username="boss", password="a long passphrase nobody guesses")


@pytest.fixture
def window(settings):
    settings.LOGIN_RATE_LIMIT_WINDOW_SECONDS = 3600
    fresh_login_window()


def admin_login(username: str, password: str, *, client_ip: str = "127.0.0.1", client: Client | None = None):
    client = client or Client()
    response = client.post(LOGIN, {"username": username, "password": password, "next": "/admin/"},
                           REMOTE_ADDR=client_ip)  # fmt: skip
    return response, client


def form_errors(response) -> list[str]:
    return list(response.context["form"].non_field_errors())


def test_the_admin_login_still_signs_in(admin_user, window):
    response, client = admin_login("boss", "a long passphrase nobody guesses")

    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200


def test_too_many_attempts_for_one_username_lock_the_admin_login_even_with_the_right_password(
    admin_user, settings, window
):
    settings.LOGIN_RATE_LIMIT_PER_USERNAME = 3
    for i in range(3):  # from three addresses: the username's limit, not the address's
        response, _ = admin_login("boss", "wrong", client_ip=f"10.0.0.{i}")
        assert response.status_code == 200 and "Please enter the correct username" in form_errors(response)[0]

    response, client = admin_login("boss", "a long passphrase nobody guesses", client_ip="10.0.0.99")

    assert response.status_code == 200
    (message,) = form_errors(response)
    assert message.startswith("Too many login attempts for this username or from this address. Try again in ")
    assert client.get("/admin/").status_code == 302  # not signed in: sent to the login page


def test_too_many_attempts_from_one_address_lock_the_admin_login(admin_user, settings, window):
    settings.LOGIN_RATE_LIMIT_PER_IP = 2
    for name in ("guess1", "guess2"):
        admin_login(name, "wrong", client_ip="10.9.9.9")

    limited, _ = admin_login("boss", "a long passphrase nobody guesses", client_ip="10.9.9.9")
    elsewhere, _ = admin_login("boss", "a long passphrase nobody guesses", client_ip="10.9.9.10")

    assert form_errors(limited)[0].startswith("Too many login attempts")
    assert elsewhere.status_code == 302


def test_the_admin_and_the_api_login_share_one_count_per_username(admin_user, settings, window):
    settings.LOGIN_RATE_LIMIT_PER_USERNAME = 3
    admin_login("boss", "wrong")
    admin_login("boss", "wrong")
    APIClient().post("/api/v1/auth/token", {"username": "boss", "password": "wrong"}, format="json")

    api = APIClient().post(
        "/api/v1/auth/token", {"username": "boss", "password": "a long passphrase nobody guesses"}, format="json"
    )
    response, _ = admin_login("boss", "a long passphrase nobody guesses")

    assert api.status_code == 429
    assert form_errors(response)[0].startswith("Too many login attempts")


@pytest.mark.django_db(transaction=True)
def test_without_redis_the_admin_login_refuses_with_a_message_not_a_500(admin_user):
    checked = run_in_django_process(
        """
        from django.test import Client
        from django.test.utils import setup_test_environment
        setup_test_environment()  # answers carry their template context
        response = Client().post("/admin/login/", {"username": "boss", "password": "a long passphrase nobody guesses"})
        print(response.status_code, list(response.context["form"].non_field_errors()))
        """,
        redis_url=f"redis://127.0.0.1:{free_port()}/15",  # nothing listens there
    )

    assert checked.stdout.startswith("200 ['Logins are paused: the attempt counter (Redis) does not answer."), (
        checked.stdout + checked.stderr
    )


# --- Password validators -----------------------------------------------------------------------


@pytest.mark.parametrize("password", ["1", "12345678", "password", "boss", "short1"])
def test_weak_passwords_are_refused(password):
    with pytest.raises(ValidationError):
        validate_password(password, user=User(username="boss"))


def test_the_admin_refuses_a_weak_password_for_a_new_user(admin_client):
    form = {"username": "newbie", "password1": "1", "password2": "1", "usable_password": "true"}
    response = admin_client.post("/admin/accounts/user/add/", form)

    assert response.status_code == 200
    assert response.context["adminform"].form.errors["password2"]
    assert not User.objects.filter(username="newbie").exists()


def test_make_runs_generated_admin_password_passes_the_validators(tmp_path, monkeypatch):
    monkeypatch.setattr(serve, "ADMIN_PASSWORD_FILE", tmp_path / "admin-password.txt")
    serve._ensure_admin()

    validate_password(serve.ADMIN_PASSWORD_FILE.read_text().strip(), user=User.objects.get(username="admin"))
