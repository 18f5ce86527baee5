"""The operator's page in the admin: who may open it, its numbers, and its chart in Chromium."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission
from django.test import Client

from accounts.models import User
from devtools.browser import chromium_page
from devtools.testing import client_for, make_product, make_user, order_body
from inventory import redis_counts
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
    assert page.status_code == 200 and '<div id="charts"' in html
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


def test_the_operator_data_names_a_stock_shard_that_waits_for_a_rebuild(sharded_stock):
    client = _staff(may_view_orders=True)
    assert client.get("/admin/operator/data").json()["stockShards"] == {
        shard.tag: {"loaded": True, "tracked": 0} for shard in sharded_stock
    }
    failed_over = sharded_stock[1]
    redis_counts.redis_client().set(failed_over.ready_key, "0123456789abcdef")  # another server's run

    shards = client.get("/admin/operator/data").json()["stockShards"]

    assert [tag for tag, shard in shards.items() if not shard["loaded"]] == [failed_over.tag]


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


def _legend(page, series: str) -> tuple[str, str]:
    """The time and the value a chart's legend shows (under the pointer, else the latest)."""
    values = page.locator(f".panel[data-series={series}] .u-legend .u-value").all_inner_texts()
    return values[0], values[1]


@pytest.mark.slow
def test_the_operator_charts_show_a_time_axis_each_series_in_its_unit_and_the_values_after_orders(live_server):
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
        page.wait_for_selector("#charts .panel .u-legend")
        opened_with = int(page.locator("#charts").get_attribute("data-points") or 0)
        for _ in range(3):
            assert api.post("/api/v1/orders", order_body(user, (product, 1)), format="json").status_code == 201
        # Polled from here (a string evaluated in the page is refused by its policy: no eval),
        # until the polls after the three orders have shown them: their rate in the orders' legend
        # (for one poll), and the stock table (the ledger's column may be a poll or two behind).
        row = page.locator("#stock tbody tr").first.locator("td")
        rates = set()
        for _ in range(150):
            cells = row.all_inner_texts() if row.count() else []
            rates.add(_legend(page, "orders")[1])
            if cells == [str(product.id), "45", "45"] and rates - {"-", "0.0"}:
                break
            page.wait_for_timeout(100)
        page.screenshot(path=SHOTS / "operator-page.png", full_page=True)
        points = int(page.locator("#charts").get_attribute("data-points") or 0)
        panels = page.locator("#charts .panel")
        titles = panels.locator(".u-title").all_inner_texts()
        ticks = {
            panel.get_attribute("data-series"): (
                panel.get_attribute("data-x-ticks"),
                panel.get_attribute("data-y-ticks"),
            )
            for panel in panels.all()
        }
        latest_time, latest_backlog = _legend(page, "backlog")
        marker = page.locator(".panel[data-series=orders] .opened-marker")
        marker_shown, marker_text = marker.is_visible(), marker.inner_text()
        marker_left = (
            marker.bounding_box()["x"] - page.locator(".panel[data-series=orders] .u-over").bounding_box()["x"]
        )
        # The pointer at the plot's left edge: every legend shows that moment's time instead.
        over = page.locator(".panel[data-series=orders] .u-over").bounding_box()
        page.mouse.move(over["x"] + 2, over["y"] + over["height"] / 2)
        page.wait_for_timeout(100)
        hovered_time = _legend(page, "paidMs")[0]
        errors = list(page.console_errors)

    assert titles == [
        "Orders accepted or paid (orders/s)",
        "Order errors (every code) (errors/s)",
        "Payment backlog (orders)",
        "Time to PAID (mean of the orders paid) (ms)",
    ]
    for series, (x_ticks, y_ticks) in ticks.items():
        assert all(re.fullmatch(r"\d\d:\d\d:\d\d", t) for t in x_ticks.split()), (series, x_ticks)
        assert y_ticks.split()[0] == "0" and len(y_ticks.split()) >= 2, (series, y_ticks)
    assert max(float(r) for r in rates - {"-"}) > 0  # three orders between two polls: their rate
    assert re.fullmatch(r"\d\d:\d\d:\d\d", latest_time) and latest_backlog == "0"
    assert marker_shown and marker_text == "page opened" and marker_left > 0  # the history lies left of it
    assert hovered_time != latest_time and re.fullmatch(r"\d\d:\d\d:\d\d", hovered_time)
    assert opened_with >= 2  # drawn from the recorded history, before any poll of its own
    assert points > opened_with
    assert errors == []  # a Content-Security-Policy refusal would show here too
    assert cells == [str(product.id), "45", "45"]


def test_the_vendored_chart_library_is_the_pinned_release_it_says():
    """ops/static/vendor/uplot/VENDORED.md names the files' SHA-256: a change to them shows here."""
    folder = Path(settings.BASE_DIR) / "ops" / "static" / "vendor" / "uplot"
    pinned = dict(re.findall(r"`(uPlot[\w.]+)` ([0-9a-f]{64})", (folder / "VENDORED.md").read_text()))

    assert set(pinned) == {"uPlot.iife.min.js", "uPlot.min.css"}
    for name, digest in pinned.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    assert "(v1.6.31)" in (folder / "uPlot.iife.min.js").read_text()[:80]
    assert "MIT License" in (folder / "LICENSE").read_text()
