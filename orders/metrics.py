"""Order gauges for /metrics, read at scrape time (ops/metrics_api.py): the payment backlog
and the outbox. Two queries per scrape, each served by a partial index (orders_order_pending,
orderevent_unpublished), whatever the number of orders settled or events published."""

from __future__ import annotations

from prometheus_client.core import GaugeMetricFamily

from kernel.database import sql_one
from orders import intake
from orders.models import PENDING_SQL

_BACKLOG_SQL = f"""
SELECT count(*), COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - min(created_at)), 0)
FROM orders_order WHERE {PENDING_SQL}
"""
_OUTBOX_SQL = """
SELECT count(*), COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - min(created_at)), 0)
FROM orders_orderevent WHERE published_at IS NULL
"""


class OrdersCollector:
    def collect(self):
        pending, oldest = sql_one(_BACKLOG_SQL, [])
        pending += intake.intake_backlog()
        oldest = max(float(oldest), intake.intake_oldest_seconds())
        yield GaugeMetricFamily(
            "shop_payment_backlog_orders",
            "Accepted orders waiting for a settler (in the intake, or PENDING_PAYMENT in the database).", value=pending,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "shop_payment_backlog_oldest_seconds", "How long the oldest unpaid order has waited (0: none).",
            value=float(oldest),
        )  # fmt: skip
        unpublished, lag = sql_one(_OUTBOX_SQL, [])
        yield GaugeMetricFamily(
            "shop_outbox_unpublished_events", "Order events written and not yet relayed to the stream.",
            value=unpublished,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "shop_outbox_relay_lag_seconds", "Age of the oldest unrelayed order event (0: none).", value=float(lag)
        )
