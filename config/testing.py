"""Factories and helpers for tests: plain functions, real services, real servers."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import connection
from rest_framework.test import APIClient

from accounts.models import User
from accounts.services import token_create, user_create
from inventory.models import Product
from inventory.services import product_create

_usernames = (f"customer{i}" for i in itertools.count(1))


def make_user(*, balance: int = 1_000, username: str | None = None) -> User:
    return user_create(username=username or next(_usernames), balance=balance)


def make_product(*, price: int = 100, stock_quantity: int = 100, name: str = "Widget") -> Product:
    return product_create(name=name, price=price, stock_quantity=stock_quantity)


def client_for(user: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token_create(user=user).key}")
    return client


def order_body(user: User, *items: tuple[Product, int], coupon: str | None = None) -> dict:
    body = {
        "userId": user.id,
        "orderItems": [{"productId": p.id, "quantity": q, "price": p.price} for p, q in items],
    }
    if coupon:
        body["couponCode"] = coupon
    return body


def race(count: int, action: Callable[[int], object]) -> list[object]:
    """Run `action(i)` for i in range(count) on `count` real threads released at the same moment.

    Each thread has its own database connection (Django's are per thread) and closes it.
    """
    barrier = threading.Barrier(count)

    def run(i: int):
        try:
            barrier.wait()
            return action(i)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def database_url_for_tests() -> str:
    """The URL of the database this test runs against (pytest-django's test_shop)."""
    s = connection.settings_dict
    return f"postgres://{s['USER']}@{s['HOST']}:{s['PORT']}/{s['NAME']}"


def run_in_django_process(code: str, *, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python process with Django set up on the test database and Redis."""
    env = dict(os.environ, DATABASE_URL=database_url_for_tests(), SHOP_TESTING="1")
    env["REDIS_TEST_URL"] = settings.REDIS_URL
    script = "import django, os\nos.environ.setdefault('DJANGO_SETTINGS_MODULE', 'config.settings')\ndjango.setup()\n"
    return subprocess.run(
        [sys.executable, "-c", script + textwrap.dedent(code)],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
