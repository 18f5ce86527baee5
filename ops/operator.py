"""The operator's page in the admin: orders per second, error rate, payment backlog, time to
PAID and stock per product, refreshing itself with a chart.

The page is static HTML plus a script file (no inline script: the admin runs under a Content
Security Policy); the script polls `operator/data`, which reads the very numbers /metrics
serves (every process's counters and the scrape-time gauges) and returns them as JSON. Rates
come from the differences between two snapshots. So that the chart shows the last minutes as
soon as the page opens, Celery beat records a snapshot every OPERATOR_HISTORY_INTERVAL_SECONDS
into a short Redis list (the last OPERATOR_HISTORY_POINTS), which the first poll asks for.
Staff who may view orders (`orders.view_order`) may open it.
"""

from __future__ import annotations

import time

import orjson
from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import JsonResponse
from django.template.response import TemplateResponse
from django_redis import get_redis_connection

from inventory.metrics import fewest_left
from kernel import metrics
from ops.metrics_api import scrape_registry

PERMISSION = "orders.view_order"
HISTORY_KEY = "operator:history"


def _check(request) -> None:
    if not request.user.has_perm(PERMISSION):
        raise PermissionDenied


def _page(request):
    _check(request)
    interval = settings.CELERY_BEAT_SCHEDULE["record-operator-history"]["schedule"]
    window = max(300, round(interval * settings.OPERATOR_HISTORY_POINTS))  # what the history spans, 5 min at least
    context = {
        **admin.site.each_context(request),
        "title": "Sale, live",
        "history_interval_seconds": f"{interval:g}",
        "window_seconds": window,
        "window_minutes": f"{window / 60:.3g}",
    }
    return TemplateResponse(request, "admin/operator.html", context)


def operator_snapshot() -> dict:
    """What the page shows, read from every process's metrics now; `at` is this host's clock in
    ms (rates are differences between two snapshots)."""
    parsed = metrics.samples(metrics.exposition(scrape_registry()).decode())

    paid_buckets = metrics.by_label(parsed, "shop_order_time_to_paid_seconds_bucket", "le")
    return {
        "at": int(time.time() * 1000),
        "orders": metrics.total(parsed, "shop_orders_total", outcome="paid")
        + metrics.total(parsed, "shop_orders_total", outcome="accepted"),
        "orderRequests": metrics.total(parsed, "shop_http_requests_total", view="orders", method="POST"),
        "orderErrors": metrics.by_label(parsed, "shop_api_errors_total", "code"),
        "backlogOrders": metrics.total(parsed, "shop_payment_backlog_orders"),
        "backlogOldestSeconds": metrics.total(parsed, "shop_payment_backlog_oldest_seconds"),
        "timeToPaid": {
            "count": metrics.total(parsed, "shop_order_time_to_paid_seconds_count"),
            "sum": metrics.total(parsed, "shop_order_time_to_paid_seconds_sum"),
            "buckets": paid_buckets,
        },
        **_fewest_left(metrics.by_label(parsed, "shop_stock_redis_units", "product"),
                       metrics.by_label(parsed, "shop_stock_database_units", "product")),
        "stockDatabaseAgeSeconds": metrics.total(parsed, "shop_stock_database_age_seconds"),
        "stockProducts": metrics.total(parsed, "shop_stock_products"),
        "stockShards": _stock_shards(parsed),
    }  # fmt: skip


def _stock_shards(parsed: dict) -> dict:
    """Each stock shard's tag ("single" on one Redis): loaded or waiting for a rebuild, and the
    reservations it tracks."""
    tracked = metrics.by_label(parsed, "shop_stock_shard_reservations_tracked", "shard")
    return {shard: {"loaded": bool(loaded), "tracked": int(tracked.get(shard, 0))}
            for shard, loaded in metrics.by_label(parsed, "shop_stock_shard_loaded", "shard").items()}  # fmt: skip


def _fewest_left(live: dict[str, float], ledger: dict[str, float]) -> dict:
    """The OPERATOR_STOCK_ROWS products with the fewest units left (live, else by the ledger) of
    those /metrics shows: those a sale is about to sell out, not a page of ten thousand rows."""
    shown = fewest_left({int(pid): units for pid, units in ledger.items()},
                        {int(pid): units for pid, units in live.items()}, settings.OPERATOR_STOCK_ROWS)  # fmt: skip
    return {
        "stockRedis": {str(pid): live[str(pid)] for pid in shown if str(pid) in live},
        "stockDatabase": {str(pid): ledger[str(pid)] for pid in shown},
    }


def operator_history_record() -> None:
    """Append a snapshot to the history the page starts from (Celery beat, every few seconds)."""
    redis = get_redis_connection("default")
    pipe = redis.pipeline(transaction=False)
    pipe.rpush(HISTORY_KEY, orjson.dumps(operator_snapshot()))
    pipe.ltrim(HISTORY_KEY, -settings.OPERATOR_HISTORY_POINTS, -1)
    pipe.execute()


def operator_history() -> list[dict]:
    """The recorded snapshots, oldest first."""
    return [orjson.loads(raw) for raw in get_redis_connection("default").lrange(HISTORY_KEY, 0, -1)]


def _data(request):
    _check(request)
    answer = operator_snapshot()
    if request.GET.get("history"):
        answer["history"] = operator_history()
    return JsonResponse(answer)


page = admin.site.admin_view(_page)
data = admin.site.admin_view(_data)
