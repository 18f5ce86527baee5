"""GET /metrics after real requests (parsed with prometheus_client's own parser), across real
gunicorn workers, and who may read it; request ids and JSON log lines."""

from __future__ import annotations

import json
import re
import shutil
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.db import connection
from django.test import Client, RequestFactory
from django.test.utils import CaptureQueriesContext
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from accounts.services import account_withdraw, token_create
from devtools.testing import (
    BalanceRowHeld,
    Settler,
    client_for,
    free_port,
    make_product,
    make_user,
    order_body,
    wait_for,
)
from inventory import redis_counts
from inventory.reconciliation import inventory_reconcile
from kernel import metrics
from loadtest import cpu, server
from ops.metrics_api import metrics_view
from orders.models import OrderEvent
from orders.settlement import orders_settle_batch

pytestmark = [
    pytest.mark.usefixtures("database_intake"),  # the database's asynchronous path (the intake: test_intake.py)
    pytest.mark.django_db(transaction=True),  # the order path commits on its own connection
]
ASYNC = {"HTTP_PREFER": "respond-async"}


def scrape() -> dict:
    response = Client().get("/metrics")  # the test client calls from 127.0.0.1
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return metrics.samples(response.content.decode())


class Scraped:
    """What /metrics added since this was made: `added("shop_orders_total", outcome="paid")`."""

    def __init__(self) -> None:
        self.before = scrape()
        self.after: dict = {}

    def again(self) -> Scraped:
        self.after = scrape()
        return self

    def added(self, name: str, **labels: str) -> float:
        return metrics.total(self.after, name, **labels) - metrics.total(self.before, name, **labels)


def test_metrics_count_orders_by_outcome_and_errors_by_their_code(settings):
    settings.STOCK_LEDGER_GAUGE_SECONDS = 0  # the ledger summed at each scrape: exact counts
    product = make_product(price=100, stock_quantity=3)
    rich, poor = make_user(balance=10_000), make_user(balance=50)
    rich_client, poor_client = client_for(rich), client_for(poor)
    scraped = Scraped()

    assert rich_client.post("/api/v1/orders", order_body(rich, (product, 1)), format="json").status_code == 201
    assert rich_client.post("/api/v1/orders", order_body(rich, (product, 1)), format="json").status_code == 201
    accepted = rich_client.post("/api/v1/orders", order_body(rich, (product, 1)), format="json", **ASYNC)
    assert accepted.status_code == 202
    sold_out = rich_client.post("/api/v1/orders", order_body(rich, (product, 1)), format="json")
    assert sold_out.json()["error"]["code"] == "OUT_OF_STOCK"
    other = make_product(price=100, stock_quantity=5)
    short = poor_client.post("/api/v1/orders", order_body(poor, (other, 1)), format="json")
    assert short.json()["error"]["code"] == "INSUFFICIENT_BALANCE"
    assert rich_client.get("/api/v1/orders/999999").status_code == 404

    scraped.again()
    assert scraped.added("shop_orders_total", outcome="paid") == 2
    assert scraped.added("shop_orders_total", outcome="accepted") == 1
    assert scraped.added("shop_api_errors_total", view="orders", method="POST", code="OUT_OF_STOCK") == 1
    assert scraped.added("shop_api_errors_total", view="orders", method="POST", code="INSUFFICIENT_BALANCE") == 1
    assert scraped.added("shop_api_errors_total", view="order-detail", method="GET", code="NOT_FOUND") == 1
    assert scraped.added("shop_http_requests_total", view="orders", method="POST", status="201") == 2
    assert scraped.added("shop_http_requests_total", view="orders", method="POST", status="202") == 1
    assert scraped.added("shop_http_requests_total", view="orders", method="POST", status="409") == 2
    # Every order request has its latency observed, in a bucket no larger than +Inf.
    assert scraped.added("shop_http_request_duration_seconds_count", view="orders", method="POST") == 5
    assert scraped.added("shop_http_request_duration_seconds_bucket", view="orders", method="POST", le="+Inf") == 5
    # The scrape-time gauges: the one accepted order waits for a settler; live and ledger stock.
    assert metrics.total(scraped.after, "shop_payment_backlog_orders") == 1
    assert metrics.total(scraped.after, "shop_payment_backlog_oldest_seconds") > 0
    assert metrics.total(scraped.after, "shop_stock_redis_units", product=str(product.id)) == 0
    assert metrics.total(scraped.after, "shop_stock_database_units", product=str(product.id)) == 0
    assert metrics.total(scraped.after, "shop_stock_redis_units", product=str(other.id)) == 5
    unrelayed = OrderEvent.objects.filter(published_at__isnull=True).count()
    assert unrelayed > 0 and metrics.total(scraped.after, "shop_outbox_unpublished_events") == unrelayed
    assert metrics.total(scraped.after, "shop_scrape_collector_up") == 2  # both collectors answered


def test_the_ledger_is_summed_once_per_interval_for_every_scrape_in_it(settings):
    settings.STOCK_LEDGER_GAUGE_SECONDS = 3600
    product, user = make_product(price=1, stock_quantity=5), make_user(balance=100)
    first = scrape()
    assert client_for(user).post("/api/v1/orders", order_body(user, (product, 2)), format="json").status_code == 201

    with CaptureQueriesContext(connection) as queries:
        inside = scrape()
    settings.STOCK_LEDGER_GAUGE_SECONDS = 1e-6  # the snapshot is now past its age: summed again
    past = scrape()

    ledger = [q["sql"] for q in queries.captured_queries if "inventory_stockmovement" in q["sql"]]
    assert ledger == []  # inside the interval a scrape reads the shared snapshot, not the ledger
    assert metrics.total(first, "shop_stock_database_units", product=str(product.id)) == 5
    assert metrics.total(inside, "shop_stock_database_units", product=str(product.id)) == 5  # as of the snapshot
    assert metrics.total(inside, "shop_stock_database_age_seconds") > 0
    assert metrics.total(inside, "shop_stock_redis_units", product=str(product.id)) == 3  # Redis is live
    assert metrics.total(past, "shop_stock_database_units", product=str(product.id)) == 3
    assert metrics.total(past, "shop_stock_database_age_seconds") == 0


def test_stock_per_product_is_shown_for_the_products_with_the_fewest_units_left(settings):
    settings.METRICS_STOCK_PRODUCTS, settings.STOCK_LEDGER_GAUGE_SECONDS = 2, 0
    plenty, few, fewest = (make_product(price=1, stock_quantity=units) for units in (50, 4, 9))
    user = make_user(balance=100)
    assert client_for(user).post("/api/v1/orders", order_body(user, (fewest, 8)), format="json").status_code == 201

    scraped = scrape()

    assert metrics.by_label(scraped, "shop_stock_redis_units", "product") == {str(fewest.id): 1, str(few.id): 4}
    assert set(metrics.by_label(scraped, "shop_stock_database_units", "product")) == {str(fewest.id), str(few.id)}
    assert str(plenty.id) not in metrics.by_label(scraped, "shop_stock_database_units", "product")
    assert metrics.total(scraped, "shop_stock_products") == 3


def test_metrics_enabled_false_counts_no_request(settings):
    settings.METRICS_ENABLED = False
    product, user = make_product(price=1, stock_quantity=5), make_user(balance=100)
    scraped = Scraped()

    assert client_for(user).post("/api/v1/orders", order_body(user, (product, 1)), format="json").status_code == 201

    scraped.again()
    assert scraped.added("shop_orders_total") == 0
    assert scraped.added("shop_http_requests_total") == 0


def test_a_settled_batch_is_measured_with_each_orders_time_to_paid():
    product, user = make_product(price=10, stock_quantity=10), make_user(balance=1_000)
    client = client_for(user)
    for _ in range(3):
        assert client.post("/api/v1/orders", order_body(user, (product, 1)), format="json", **ASYNC).status_code == 202
    scraped = Scraped()

    batch = orders_settle_batch(limit=10)

    scraped.again()
    assert len(batch.paid) == 3
    assert scraped.added("shop_settlement_batch_size_count") == 1
    assert scraped.added("shop_settlement_batch_size_sum") == 3
    assert scraped.added("shop_settled_orders_total", result="paid") == 3
    assert scraped.added("shop_order_time_to_paid_seconds_count") == 3
    assert scraped.added("shop_settlement_batch_duration_seconds_count") == 1
    assert metrics.total(scraped.after, "shop_payment_backlog_orders") == 0


def test_reconciliation_counts_the_drift_it_found_and_repaired():
    product = make_product(price=1, stock_quantity=10)
    redis_counts.add_available(product_id=product.id, quantity=3)  # Redis now says 13
    scraped = Scraped()

    assert [p.product_id for p in inventory_reconcile().drifted] == [product.id]

    scraped.again()
    assert scraped.added("shop_stock_drift_found_total") == 1
    assert scraped.added("shop_stock_drift_repaired_total") == 1
    assert metrics.total(scraped.after, "shop_stock_redis_units", product=str(product.id)) == 10


def _waiting_on_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0


def test_a_forced_balance_version_conflict_is_counted_once_and_retried():
    """The withdrawal reads version v, then waits on the row a top-up holds; the top-up commits
    v+1, so the withdrawal's version check misses exactly once, and its retry wins."""
    user = make_user(balance=1_000)
    scraped = Scraped()
    withdrawal: dict = {}

    def withdraw():
        withdrawal["change"] = account_withdraw(user_id=user.id, amount=100, reference="order:1")
        connection.close()

    with BalanceRowHeld(user_id=user.id):
        withdrawer = threading.Thread(target=withdraw)
        withdrawer.start()
        wait_for(_waiting_on_a_lock, what="the withdrawal to wait on the row lock")
    withdrawer.join()

    assert withdrawal["change"].balance_after == 905
    scraped.again()
    assert scraped.added("shop_balance_version_conflicts_total") == 1
    assert scraped.added("shop_balance_conflict_failures_total") == 0
    assert metrics.report_counters(scraped.after)["balance_version_conflicts"] >= 1


# --- Who may read /metrics ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("remote", "authorization", "token", "allow_loopback", "status"),
    [
        ("127.0.0.1", "", "", True, 200),
        ("::1", "", "", True, 200),
        ("203.0.113.7", "", "", True, 403),
        ("203.0.113.7", "", "s3cret", True, 403),
        ("203.0.113.7", "Bearer wrong", "s3cret", True, 403),
        ("203.0.113.7", "Bearer s3cret", "s3cret", True, 200),
        ("203.0.113.7", "Bearer ", "", True, 403),  # no token configured: an empty one opens nothing
        ("127.0.0.1", "", "s3cret", False, 403),  # behind a local proxy: loopback is not enough
        ("127.0.0.1", "Bearer s3cret", "s3cret", False, 200),
        # Not ASCII: a wrong token like any other (compared as bytes), not a 500
        ("203.0.113.7", "Bearer s3crét", "s3cret", True, 403),
        ("203.0.113.7", "Bearer пароль", "s3cret", True, 403),
    ],
)
def test_metrics_answer_loopback_or_the_bearer_token_only(
    settings, remote, authorization, token, allow_loopback, status
):
    settings.METRICS_TOKEN, settings.METRICS_ALLOW_LOOPBACK = token, allow_loopback
    request = RequestFactory().get("/metrics", REMOTE_ADDR=remote, HTTP_AUTHORIZATION=authorization)

    response = metrics_view(request)

    assert response.status_code == status
    if status == 403:
        assert json.loads(response.content)["error"]["code"] == "FORBIDDEN"
        assert b"shop_" not in response.content
    else:  # the scrape's own gauge: counters appear only once something counted them
        assert b"shop_scrape_collector_up" in response.content


# --- Request ids ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("abc-123", True),
        ("Root=1-67891233-abcdef012345678912345678", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("bad id with spaces", False),
        ("evil\\nINFO forged", False),
        ("", False),
        (None, False),
    ],
)
def test_a_request_id_is_answered_back_the_clients_when_safe_else_a_new_one(sent, kept):
    headers = {} if sent is None else {"HTTP_X_REQUEST_ID": sent}

    answered = Client().get("/healthz", **headers)["X-Request-ID"]

    if kept:
        assert answered == sent
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", answered)


# --- Real processes: gunicorn workers, a settler, their logs ----------------------------------------


def _post_order(base_url: str, token: str, body: dict, headers: dict | None = None) -> tuple[int, dict, dict]:
    request = urllib.request.Request(
        f"{base_url}/api/v1/orders",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, dict(response.headers), json.loads(response.read())


def _orders_counted_by(pid: int, directory: Path, scratch: Path) -> float:
    """Orders one worker counted: its own files alone, read as a scrape reads them."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    for path in directory.glob(f"*_{pid}.db"):
        shutil.copy(path, scratch / path.name)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(scratch))
    return metrics.total(metrics.samples(generate_latest(registry).decode()), "shop_orders_total")


@pytest.mark.slow
def test_orders_counted_by_two_gunicorn_workers_add_up_in_one_scrape(monkeypatch, tmp_path):
    monkeypatch.setenv("GUNICORN_WORKERS", "2")
    product = make_product(price=1, stock_quantity=10_000)
    user = make_user(balance=100_000)
    token = token_create(user=user).key
    log = Path(tmp_path) / "gunicorn.log"
    with server.web_server(strategy="new", port=free_port(), log_path=log) as served:
        workers = cpu.children(served.pid)
        assert len(workers) == 2
        sent, body = 0, order_body(user, (product, 1))
        with ThreadPoolExecutor(max_workers=8) as pool:
            # Until each worker has served some (the kernel hands connections to either).
            for _ in range(50):
                statuses = list(pool.map(lambda _: _post_order(served.base_url, token, body)[0], range(16)))
                assert statuses == [201] * 16
                sent += 16
                counted = [_orders_counted_by(pid, server.metrics_dir(), tmp_path / "one") for pid in workers]
                if all(counted):
                    break
        scraped = metrics.scrape(served.base_url)

    assert all(counted), counted
    assert sum(counted) == sent
    assert metrics.total(scraped, "shop_orders_total", outcome="paid") == sent
    assert metrics.total(scraped, "shop_http_requests_total", view="orders", method="POST", status="201") == sent


@pytest.mark.slow
def test_the_request_id_is_on_the_json_log_line_of_acceptance_and_the_settler_logs_the_order(monkeypatch, tmp_path):
    monkeypatch.setenv("LOG_FORMAT", "json")
    monkeypatch.setenv("GUNICORN_WORKERS", "1")
    product, user = make_product(price=1, stock_quantity=10), make_user(balance=100)
    token = token_create(user=user).key
    log = Path(tmp_path) / "gunicorn.log"
    settler = Settler(extra_env={"LOG_FORMAT": "json"}, name="json-log")
    try:
        with server.web_server(strategy="new", port=free_port(), log_path=log) as served:
            status, headers, body = _post_order(
                served.base_url, token, order_body(user, (product, 1)),
                {"X-Request-ID": "trace-42", "Prefer": "respond-async"},
            )  # fmt: skip
            assert status == 202 and headers["X-Request-ID"] == "trace-42"
            order_id = body["orderId"]
            settled = wait_for(lambda: _json_lines(settler.log_path, "settled batch"), what="the settler's batch line")
    finally:
        settler.stop()

    accepted = [line for line in _json_lines(log, "accepted for payment") if line["request_id"] == "trace-42"]
    assert [line["message"] for line in accepted] == [f"order {order_id} accepted for payment"]
    assert set(accepted[0]) == {"timestamp", "level", "logger", "message", "request_id", "process"}
    assert accepted[0]["level"] == "INFO" and accepted[0]["logger"] == "orders.api"
    assert any(f"orders paid {order_id}," in line["message"] for line in settled)


def _json_lines(path: Path, containing: str) -> list[dict]:
    found = []
    for text in path.read_text().splitlines():
        if text.startswith("{"):
            line = json.loads(text)  # every JSON line parses whole
            if containing in line["message"]:
                found.append(line)
    return found
