"""Login limits beyond one username and one address: an IPv6 /64 counts as one address, and a
global limit on failed logins stops a credential-stuffing wave."""

from __future__ import annotations

import time

import pytest
from django.test import Client
from rest_framework.test import APIClient

from accounts.services import user_create
from devtools.testing import fresh_login_window, password_hash

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery"


@pytest.fixture
def alice():
    return user_create(username="alice", password=password_hash(PASSWORD))


@pytest.fixture
def window(settings):
    settings.LOGIN_RATE_LIMIT_WINDOW_SECONDS = 3600
    fresh_login_window()


def login(username: str, password: str, client_ip: str = "127.0.0.1"):
    return APIClient().post("/api/v1/auth/token", {"username": username, "password": password}, format="json",
                            REMOTE_ADDR=client_ip)  # fmt: skip


@pytest.mark.parametrize(
    "tried_from, then_from, limited",
    [
        (["2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:fffe"], "2001:db8:1:2:abcd::7", True),  # one /64
        (["2001:db8:1:2::1", "2001:db8:1:2::2"], "2001:db8:1:3::1", False),  # the next /64
        (["2001:DB8:1:2::1", "2001:db8:1:2:0:0:0:2"], "2001:db8:1:2::3", True),  # however it is written
        (["::ffff:10.1.1.1", "10.1.1.1"], "10.1.1.1", True),  # IPv4-mapped is the IPv4 address
        (["10.1.1.1", "10.1.1.2"], "10.1.1.3", False),  # IPv4 addresses count one by one
    ],
)
def test_the_per_address_limit_counts_an_ipv6_64_as_one_address(alice, settings, window, tried_from, then_from,
                                                                 limited):  # fmt: skip
    settings.LOGIN_RATE_LIMIT_PER_IP = 2
    for i, address in enumerate(tried_from):
        assert login(f"guess{i}", "wrong", client_ip=address).status_code == 401

    response = login("alice", PASSWORD, client_ip=then_from)

    if limited:
        assert response.status_code == 429
        assert response.json()["error"]["details"]["scope"] == "ip"
    else:
        assert response.status_code == 201


def test_past_the_global_limit_of_failed_logins_every_login_is_refused_until_the_window_ends(alice, settings):
    settings.LOGIN_RATE_LIMIT_WINDOW_SECONDS = 3
    settings.LOGIN_FAILED_GLOBAL_LIMIT = 3
    fresh_login_window(at_least=2)
    # A wave: each username tried once, each from an address of its own.
    for i in range(3):
        assert login(f"victim{i}", "leaked", client_ip=f"10.7.0.{i}").status_code == 401

    api = login("alice", PASSWORD, client_ip="10.8.0.1")
    admin = Client().post("/admin/login/", {"username": "alice", "password": PASSWORD}, REMOTE_ADDR="10.8.0.2")

    assert api.status_code == 429
    assert api.json()["error"]["details"] == {"scope": "global", "limit": 3, "windowSeconds": 3}
    assert 1 <= int(api["Retry-After"]) <= 3
    assert "Too many failed logins on this site right now: logins are paused for everyone." in admin.content.decode()

    index = int(time.time() // 3)
    while int(time.time() // 3) == index:  # the next window
        time.sleep(0.05)
    assert login("alice", PASSWORD, client_ip="10.8.0.1").status_code == 201


def test_successful_logins_do_not_count_against_the_global_limit(alice, settings, window):
    settings.LOGIN_FAILED_GLOBAL_LIMIT = 2
    settings.LOGIN_RATE_LIMIT_PER_USERNAME = 100
    for _ in range(5):
        assert login("alice", PASSWORD).status_code == 201
    assert login("alice", "typo").status_code == 401

    assert login("alice", PASSWORD).status_code == 201


def test_a_global_limit_of_zero_is_off(alice, settings, window):
    settings.LOGIN_FAILED_GLOBAL_LIMIT = 0
    for i in range(5):
        assert login(f"victim{i}", "leaked", client_ip=f"10.7.0.{i}").status_code == 401

    assert login("alice", PASSWORD).status_code == 201
