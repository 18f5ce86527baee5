"""The service's Prometheus metrics, one catalog (docs/observability.md lists them).

prometheus_client in its multiprocess mode: each process (gunicorn worker, settler, Celery
worker) writes its values to mmap-backed files in PROMETHEUS_MULTIPROC_DIR, and a scrape of
/metrics adds them up across processes (ops/metrics_api.py). An increment is an in-process
write of a few microseconds, no round trip; this is why the order path may count per request.
The directory is set in the environment by settings before this module is imported (the client
decides its mode at import: config.local.metrics_dir), and wiped by whatever starts the
processes (devtools/serve.py, the load-test server, the test session), never by one that writes.
"""

from __future__ import annotations

import urllib.request

from django.conf import settings
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.parser import text_string_to_metric_families

# Buckets around the seed's 200 ms threshold for an order.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 1.0, 2.5, 5.0)

# --- Per request (off with METRICS_ENABLED=false) -----------------------------------------
HTTP_REQUESTS = Counter(
    "shop_http_requests", "HTTP requests answered, by route name, method and status.", ["view", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "shop_http_request_duration_seconds",
    "Time from the request entering Django to its answer leaving, by route name and method.",
    ["view", "method"],
    buckets=LATENCY_BUCKETS,
)
API_ERRORS = Counter(
    "shop_api_errors",
    "Error answers by route name, method and the error's stable code (the body's error.code).",
    ["view", "method", "code"],
)
ORDERS = Counter(
    "shop_orders",
    "Orders answered by outcome: paid (201), accepted (202, paid later by a settler), replayed (idempotent).",
    ["outcome"],
)

# --- Rare events (always counted: they replace the Redis counters the load report read) ----
BALANCE_VERSION_CONFLICTS = Counter(
    "shop_balance_version_conflicts", "Balance updates that lost the version race and were retried."
)
BALANCE_CONFLICT_FAILURES = Counter(
    "shop_balance_conflict_failures", "Balance updates that lost every retry (answered CONFLICT or left pending)."
)
LEGACY_LOCK_RETRIES = Counter("shop_legacy_lock_retries", "Old design: waits for a product's Redis lock.")
LEGACY_LOCK_TIMEOUTS = Counter("shop_legacy_lock_timeouts", "Old design: orders that gave up waiting for a lock.")
STOCK_DRIFT_FOUND = Counter(
    "shop_stock_drift_found", "Products whose Redis stock differed from the ledger, per reconciliation."
)
STOCK_DRIFT_REPAIRED = Counter("shop_stock_drift_repaired", "Drifted products whose Redis stock was repaired.")

# --- Settlement (per batch) ---------------------------------------------------------------
SETTLE_BATCH_SIZE = Histogram(
    "shop_settlement_batch_size",
    "Orders claimed per settlement batch.",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
)
SETTLE_BATCH_DURATION = Histogram(
    "shop_settlement_batch_duration_seconds",
    "Time of one settlement batch, claim to commit.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
SETTLED_ORDERS = Counter(
    "shop_settled_orders",
    "Orders a settler took, by result: paid, cancelled, retried, set_aside (failed alone too often: cancelled), "
    "skipped (could not even be cancelled: left to expiry).",
    ["result"],
)
SETTLE_ORDER_FAILURES = Counter(
    "shop_settlement_order_failures", "Tries to settle one order alone, after its batch failed, that failed too."
)
TIME_TO_PAID = Histogram(
    "shop_order_time_to_paid_seconds",
    "Asynchronous orders: from acceptance (202) to the commit of the batch that paid them.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0),
)
INTAKE_LOST_ORDERS = Counter(
    "shop_intake_lost_orders",
    "Orders the intake accepted (202) that Redis lost with its data before a settler drained them: never charged.",
)

# The load-test report's names for the counters it shows (kernel.metrics kept them in Redis).
REPORT_COUNTERS = {
    "balance_version_conflicts": "shop_balance_version_conflicts_total",
    "balance_conflict_failures": "shop_balance_conflict_failures_total",
    "lock_retries": "shop_legacy_lock_retries_total",
    "lock_timeouts": "shop_legacy_lock_timeouts_total",
}


def enabled() -> bool:
    """Per-request metrics on (METRICS_ENABLED): read on each call, so tests may switch it."""
    return settings.METRICS_ENABLED


def multiprocess_registry() -> CollectorRegistry:
    """Every process's counters and histograms, added up (read from the directory's files)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse the text format: {(sample name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(parsed: dict, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(
        value for (sample, sample_labels), value in parsed.items() if sample == name and wanted <= set(sample_labels)
    )


def by_label(parsed: dict, name: str, label: str) -> dict[str, float]:
    """`name`'s samples summed by one label: {"OUT_OF_STOCK": 12.0, ...}."""
    found: dict[str, float] = {}
    for (sample, labels), value in parsed.items():
        if sample == name:
            key = dict(labels).get(label, "")
            found[key] = found.get(key, 0.0) + value
    return found


def read_all() -> dict[str, int]:
    """The report's counters (REPORT_COUNTERS) summed over every process, read in this process."""
    parsed = samples(exposition(multiprocess_registry()).decode())
    return report_counters(parsed)


def report_counters(parsed: dict) -> dict[str, int]:
    return {short: int(total(parsed, name)) for short, name in REPORT_COUNTERS.items()}


def scrape(base_url: str, *, token: str | None = None, timeout: float = 10) -> dict:
    """GET `base_url`/metrics (bearer `token` if given) and parse it (see `samples`)."""
    request = urllib.request.Request(f"{base_url.rstrip('/')}/metrics")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return samples(response.read().decode())
