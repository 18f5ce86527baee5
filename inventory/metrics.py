"""Stock gauges for /metrics, read at scrape time (config/metrics_api.py): Redis' live count
per product beside the ledger's, and the reservations Redis tracks. One MGET, one ZCARD and
one grouped sum over the ledger per scrape; nothing on the order path."""

from __future__ import annotations

from prometheus_client.core import GaugeMetricFamily

from inventory import stock
from inventory.services import on_hand_by_product


class StockCollector:
    def collect(self):
        on_hand = on_hand_by_product()
        live = stock.available(product_ids=list(on_hand))
        redis_stock = GaugeMetricFamily(
            "shop_stock_redis_units", "Units Redis will still reserve, per product (live stock).", labels=["product"]
        )
        db_stock = GaugeMetricFamily(
            "shop_stock_database_units",
            "Units on hand by the stock ledger, per product (reservations in flight not yet taken off).",
            labels=["product"],
        )
        for product_id, units in on_hand.items():
            db_stock.add_metric([str(product_id)], units)
            if live.get(product_id) is not None:  # not loaded into Redis: no sample rather than a false 0
                redis_stock.add_metric([str(product_id)], live[product_id])
        yield redis_stock
        yield db_stock
        yield GaugeMetricFamily(
            "shop_stock_reservations_tracked",
            "Reservations tracked in Redis: in flight, or sold in the last seconds and not yet forgotten.",
            value=stock.tracked_reservations(),
        )
