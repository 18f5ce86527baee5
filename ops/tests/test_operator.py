"""The operator's page in the admin: who may open it, its numbers, and its chart in Chromium."""

from __future__ import annotations

import re
import time

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from accounts.models import User
from devtools.browser import chromium_page
from devtools.testing import client_for, make_product, make_user, order_body
from ops.tasks import record_operator_history
from orders.tests.test_shop_page import SHOTS

pytestmark = pytest.mark.django_db(transaction=True)


def _staff(*, may_view_orders: bool) -> Client:
    user = User.objects.create_user(id=2_000_000, username="operator", password="pw", is_staff=True)
    if may_view_orders:
        user.user_permissions.add(Permission.objects.get(codename="view_order", content_type__app_label="orders"))
    client = Client()
    client.login(username="operator", password="pw")
    return client


def test_staff_without_the_view_permission_may_not_open_the_operator_page():
    client = _staff(may_view_orders=False)

    for path in ("/admin/operator/", "/admin/operator/data"):
        response = client.get(path)
        assert response.status_code == 403 and response.json()["error"]["code"] == "FORBIDDEN"
    assert Client().get("/admin/operator/data").status_code == 302  # anonymous: to the admin's login


def test_the_operator_page_loads_its_script_from_a_file_and_its_data_counts_orders(settings):
    settings.STOCK_LEDGER_GAUGE_SECONDS = 0  # the ledger's figure of this very moment
    client = _staff(may_view_orders=True)
    product, user = make_product(price=1, stock_quantity=7), make_user(balance=100)
    before = client.get("/admin/operator/data").json()
    assert client_for(user).post("/api/v1/orders", order_body(user, (product, 2)), format="json").status_code == 201

    page = client.get("/admin/operator/")
    data = client.get("/admin/operator/data").json()

    html = page.content.decode()
    assert page.status_code == 200 and '<canvas id="chart"' in html
    assert re.findall(r"<script[^>]*>", html) and all("src=" in tag for tag in re.findall(r"<script[^>]*>", html))
    assert data["orders"] - before["orders"] == 1
    assert data["stockRedis"][str(product.id)] == 5 and data["stockDatabase"][str(product.id)] == 5
    assert data["backlogOrders"] == 0


def test_the_stock_table_lists_the_products_with_the_fewest_units_left(settings):
    settings.OPERATOR_STOCK_ROWS, settings.STOCK_LEDGER_GAUGE_SECONDS = 2, 0
    make_product(price=1, stock_quantity=50)
    few, fewest = make_product(price=1, stock_quantity=4), make_product(price=1, stock_quantity=9)
    user = make_user(balance=100)
    assert client_for(user).post("/api/v1/orders", order_body(user, (fewest, 8)), format="json").status_code == 201

    data = _staff(may_view_orders=True).get("/admin/operator/data").json()

    assert data["stockRedis"] == {str(fewest.id): 1, str(few.id): 4}  # live: 1 and 4 left, not the 50
    assert set(data["stockDatabase"]) == {str(fewest.id), str(few.id)}
    assert data["stockProducts"] == 3


def test_beat_records_the_snapshots_the_page_starts_from_and_keeps_the_last_few(settings):
    settings.OPERATOR_HISTORY_POINTS = 2
    client = _staff(may_view_orders=True)
    product, user = make_product(price=1, stock_quantity=9), make_user(balance=100)
    api = client_for(user)
    for _ in range(3):
        assert api.post("/api/v1/orders", order_body(user, (product, 1)), format="json").status_code == 201
        record_operator_history()  # what beat runs every OPERATOR_HISTORY_INTERVAL_SECONDS
        time.sleep(0.002)  # snapshots a few ms apart on the clock

    answer = client.get("/admin/operator/data?history=1").json()

    history = answer["history"]
    assert len(history) == 2  # the last two of three, oldest first
    assert history[1]["orders"] - history[0]["orders"] == 1 and answer["orders"] == history[1]["orders"]
    assert history[0]["at"] < history[1]["at"] <= answer["at"]
    assert "history" not in client.get("/admin/operator/data").json()
    assert settings.CELERY_BEAT_SCHEDULE["record-operator-history"]["task"] == "config.tasks.record_operator_history"


@pytest.mark.slow
def test_the_operator_page_draws_its_chart_in_the_browser(live_server):
    User.objects.create_superuser(id=1_000_000, username="admin", password="pw")
    product, user = make_product(name="Green tea", price=1, stock_quantity=50), make_user(balance=100)
    api = client_for(user)
    for _ in range(2):  # the minutes before the page was opened, as beat recorded them
        assert api.post("/api/v1/orders", order_body(user, (product, 1)), format="json").status_code == 201
        record_operator_history()
        time.sleep(0.002)
    SHOTS.mkdir(parents=True, exist_ok=True)
    with chromium_page() as page:
        page.goto(f"{live_server.url}/admin/login/?next=/admin/operator/")
        page.fill("#id_username", "admin")
        page.fill("#id_password", "pw")
        page.click("input[type=submit]")
        page.wait_for_selector("#chart")
        for _ in range(150):  # the first poll is done once the backlog figure is written
            if page.locator("#backlog").inner_text().strip() not in ("", "-"):
                break
            page.wait_for_timeout(100)
        opened_with = int(page.locator("#chart").get_attribute("data-points") or 0)
        for _ in range(3):
            assert api.post("/api/v1/orders", order_body(user, (product, 1)), format="json").status_code == 201
        # Polled from here (a string evaluated in the page is refused by its policy: no eval),
        # until a poll after the three orders has redrawn the stock table.
        row = page.locator("#stock tbody tr").first.locator("td")
        for _ in range(150):
            cells = row.all_inner_texts() if row.count() else []
            if cells == [str(product.id), "45", "45"]:
                break
            page.wait_for_timeout(200)
        points = int(page.locator("#chart").get_attribute("data-points") or 0)
        page.screenshot(path=SHOTS / "operator-page.png", full_page=True)
        errors = list(page.console_errors)

    assert opened_with >= 2  # drawn from the recorded history, before any poll of its own
    assert points > opened_with
    assert errors == []  # a Content-Security-Policy refusal would show here too
    assert cells == [str(product.id), "45", "45"]
