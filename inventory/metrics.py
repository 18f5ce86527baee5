"""Stock gauges for /metrics, read at scrape time (ops/metrics_api.py): Redis' live count
beside the ledger's for the products with the fewest units left, and the reservations Redis
tracks. One MGET and one ZCARD per
scrape, and the ledger's grouped sum at most once per STOCK_LEDGER_GAUGE_SECONDS for all
processes together; nothing on the order path."""

from __future__ import annotations

import time

import orjson
from django.conf import settings
from prometheus_client.core import GaugeMetricFamily

from inventory import redis_counts
from inventory.reconciliation import on_hand_by_product

# Under the inv: prefix, so a reseed (which deletes inv:*) drops a snapshot of the old shop.
_SNAPSHOT_KEY = "inv:ledger-gauge"
_SNAPSHOT_LOCK_KEY = "inv:ledger-gauge:lock"
_LOCK_MS = 60_000  # longer than any sum takes; a crashed summer's lock lapses


def ledger_on_hand() -> tuple[dict[int, int], float]:
    """The ledger's units on hand per product, and how many seconds old that figure is.

    The sum reads the whole ledger: about 0.5 s at 2 million movements, which a scrape every
    second would pay every second, in every process that answers one. So one process sums it
    when the shared snapshot is older than STOCK_LEDGER_GAUGE_SECONDS (0: every scrape) and
    the others serve the last one meanwhile."""
    max_age = settings.STOCK_LEDGER_GAUGE_SECONDS
    if max_age <= 0:
        return on_hand_by_product(), 0.0
    redis = redis_counts.redis_client()
    cached = redis.get(_SNAPSHOT_KEY)
    if cached is not None:
        snapshot = orjson.loads(cached)
        age = max(0.0, time.time() - snapshot["at"])
        if age < max_age or not redis.set(_SNAPSHOT_LOCK_KEY, 1, nx=True, px=_LOCK_MS):
            return {int(pid): units for pid, units in snapshot["units"].items()}, age
    try:
        on_hand, at = on_hand_by_product(), time.time()
        redis.set(_SNAPSHOT_KEY, orjson.dumps({"at": at, "units": on_hand}, option=orjson.OPT_NON_STR_KEYS))
    finally:
        redis.delete(_SNAPSHOT_LOCK_KEY)
    return on_hand, 0.0


def fewest_left(on_hand: dict[int, int], live: dict[int, int | None], count: int) -> list[int]:
    """The `count` products with the fewest units left: live, else by the ledger."""
    return sorted(on_hand, key=lambda pid: (on_hand[pid] if live.get(pid) is None else live[pid], pid))[:count]


class StockCollector:
    """Per product only for the METRICS_STOCK_PRODUCTS with the fewest units left, the ones a
    sale is selling out: every product of a 10,000-product catalogue made each scrape 1 MB
    and 0.1-0.2 s of a worker's CPU."""

    def collect(self):
        on_hand, age = ledger_on_hand()
        live = redis_counts.available(product_ids=list(on_hand))
        shown = fewest_left(on_hand, live, settings.METRICS_STOCK_PRODUCTS)
        redis_stock = GaugeMetricFamily(
            "shop_stock_redis_units", "Units Redis will still reserve, per product (live stock).", labels=["product"]
        )
        db_stock = GaugeMetricFamily(
            "shop_stock_database_units",
            "Units on hand by the stock ledger, per product, as of shop_stock_database_age_seconds ago "
            "(reservations in flight not yet taken off).",
            labels=["product"],
        )
        for product_id in shown:
            db_stock.add_metric([str(product_id)], on_hand[product_id])
            if live.get(product_id) is not None:  # not loaded into Redis: no sample rather than a false 0
                redis_stock.add_metric([str(product_id)], live[product_id])
        yield redis_stock
        yield db_stock
        yield GaugeMetricFamily("shop_stock_products", "Products in the catalogue, shown or not.", value=len(on_hand))
        yield GaugeMetricFamily(
            "shop_stock_database_age_seconds",
            "Age of the ledger sum behind shop_stock_database_units (at most STOCK_LEDGER_GAUGE_SECONDS).",
            value=age,
        )
        states = redis_counts.shard_states()
        yield GaugeMetricFamily(
            "shop_stock_reservations_tracked",
            "Reservations tracked in Redis: in flight, or sold in the last seconds and not yet forgotten "
            "(one of several stock shards counts once per shard).",
            value=sum(state.tracked for state in states),
        )
        loaded = GaugeMetricFamily(
            "shop_stock_shard_loaded",
            "1 while a stock shard's counts are loaded by the Redis server that serves it, 0 while it waits for a "
            "rebuild (after data loss or a failover). Shard: its hash tag, or 'single' on one Redis.",
            labels=["shard"],
        )
        tracked = GaugeMetricFamily(
            "shop_stock_shard_reservations_tracked", "Reservations a stock shard tracks.", labels=["shard"]
        )
        for state in states:
            label = state.shard.tag or "single"
            loaded.add_metric([label], int(state.loaded))
            tracked.add_metric([label], state.tracked)
        yield loaded
        yield tracked
