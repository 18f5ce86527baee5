"""The operator's page in the admin: orders per second, error rate, payment backlog, time to
PAID and stock per product, refreshing itself with a chart.

The page is static HTML plus a script file (no inline script: the admin runs under a Content
Security Policy); the script polls `operator/data`, which reads the very numbers /metrics
serves (every process's counters and the scrape-time gauges) and returns them as JSON. Rates
come from the differences between two polls, so the chart covers the minutes since the page
was opened. Staff who may view orders (`orders.view_order`) may open it.
"""

from __future__ import annotations

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import JsonResponse
from django.template.response import TemplateResponse

from config import metrics
from config.metrics_api import scrape_registry

PERMISSION = "orders.view_order"


def _check(request) -> None:
    if not request.user.has_perm(PERMISSION):
        raise PermissionDenied


def _page(request):
    _check(request)
    context = {**admin.site.each_context(request), "title": "Sale, live"}
    return TemplateResponse(request, "admin/operator.html", context)


def _data(request):
    _check(request)
    parsed = metrics.samples(metrics.exposition(scrape_registry()).decode())

    def by_label(name: str, label: str) -> dict[str, float]:
        found: dict[str, float] = {}
        for (sample, labels), value in parsed.items():
            if sample == name:
                key = dict(labels).get(label, "")
                found[key] = found.get(key, 0.0) + value
        return found

    paid_buckets = {
        dict(labels)["le"]: value
        for (sample, labels), value in parsed.items()
        if sample == "shop_order_time_to_paid_seconds_bucket"
    }
    return JsonResponse({
        "orders": metrics.total(parsed, "shop_orders_total", outcome="paid")
        + metrics.total(parsed, "shop_orders_total", outcome="accepted"),
        "orderRequests": metrics.total(parsed, "shop_http_requests_total", view="orders", method="POST"),
        "orderErrors": by_label("shop_api_errors_total", "code"),
        "backlogOrders": metrics.total(parsed, "shop_payment_backlog_orders"),
        "backlogOldestSeconds": metrics.total(parsed, "shop_payment_backlog_oldest_seconds"),
        "timeToPaid": {
            "count": metrics.total(parsed, "shop_order_time_to_paid_seconds_count"),
            "sum": metrics.total(parsed, "shop_order_time_to_paid_seconds_sum"),
            "buckets": paid_buckets,
        },
        "stockRedis": by_label("shop_stock_redis_units", "product"),
        "stockDatabase": by_label("shop_stock_database_units", "product"),
    })  # fmt: skip


page = admin.site.admin_view(_page)
data = admin.site.admin_view(_data)
