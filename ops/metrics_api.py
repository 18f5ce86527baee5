"""GET /metrics (Prometheus text format) and the middleware that counts every request.

/metrics is not public: it answers callers on loopback (METRICS_ALLOW_LOOPBACK) and callers
with `Authorization: Bearer $METRICS_TOKEN`; anyone else gets a JSON 403. A scrape adds up the
counters of every process (kernel/metrics.py) and asks the collectors of METRICS_COLLECTORS for
the gauges that are state rather than events (backlog, stock, outbox): a few cheap queries once
per scrape, in the scraping process, instead of any work on the order path.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from functools import cache

from django.conf import settings
from django.core.exceptions import MiddlewareNotUsed
from django.http import HttpResponse
from django.urls import Resolver404, resolve
from django.utils.module_loading import import_string
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from kernel import metrics
from kernel.errors import ErrorCode, json_error_response

logger = logging.getLogger(__name__)

UNMATCHED = "unmatched"  # no route: a 404, or an answer given before routing
STATIC = "static"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _allowed(request) -> bool:
    if settings.METRICS_ALLOW_LOOPBACK and _is_loopback(request.META.get("REMOTE_ADDR", "")):
        return True
    token = settings.METRICS_TOKEN
    scheme, _, given = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    # As bytes: compare_digest refuses str with non-ASCII characters (a TypeError, a 500 to
    # whoever sends one), and a header may carry any.
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def metrics_view(request):
    if request.method not in ("GET", "HEAD"):
        return json_error_response(ErrorCode.METHOD_NOT_ALLOWED, "Only GET.", 405)
    if not _allowed(request):
        return json_error_response(
            ErrorCode.FORBIDDEN, "Metrics are served on loopback or with the bearer token METRICS_TOKEN.", 403
        )
    return HttpResponse(metrics.exposition(scrape_registry()), content_type=CONTENT_TYPE_LATEST)


def scrape_registry() -> CollectorRegistry:
    """What a scrape reads: every process's counters and histograms, and the collectors' gauges."""
    registry = metrics.multiprocess_registry()
    registry.register(_Collectors(_collectors()))
    return registry


@cache
def _collectors() -> tuple:
    return tuple(import_string(path)() for path in settings.METRICS_COLLECTORS)


class _Collectors:
    """The scrape-time collectors, each on its own: one that fails (the database down) is
    reported as shop_scrape_collector_up 0 and the rest still answer."""

    def __init__(self, collectors: tuple) -> None:
        self.collectors = collectors

    def collect(self):
        up = GaugeMetricFamily(
            "shop_scrape_collector_up", "1 when the collector answered this scrape.", labels=["collector"]
        )
        for collector in self.collectors:
            name = type(collector).__name__
            try:
                families = list(collector.collect())
            except Exception:
                logger.warning("metrics collector %s failed", name, exc_info=True)
                up.add_metric([name], 0)
                continue
            up.add_metric([name], 1)
            yield from families
        yield up


class HttpMetricsMiddleware:
    """Counts each answer by route name (not path: bounded labels), method and status, with
    its latency, and error answers by their stable code (`error_code`, set by kernel.errors).
    In-process increments only; absent with METRICS_ENABLED=false."""

    def __init__(self, get_response):
        if not settings.METRICS_ENABLED:
            raise MiddlewareNotUsed
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        elapsed = time.perf_counter() - started
        view = _view_name(request, response.status_code)
        method = request.method if request.method in _METHODS else "OTHER"
        metrics.HTTP_REQUESTS.labels(view, method, str(response.status_code)).inc()
        metrics.HTTP_LATENCY.labels(view, method).observe(elapsed)
        code = getattr(response, "error_code", None)
        if code is not None:
            metrics.API_ERRORS.labels(view, method, str(code)).inc()
        return response


def _view_name(request, status_code: int) -> str:
    match = request.resolver_match
    if match is not None:
        return match.view_name
    if request.path.startswith(f"/{settings.STATIC_URL.lstrip('/')}"):
        return STATIC
    if status_code >= 400:  # refused before routing (a body too large): name the route it was for
        try:
            return resolve(request.path_info).view_name
        except Resolver404:
            pass
    return UNMATCHED
