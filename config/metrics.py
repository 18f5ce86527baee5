"""Server-side counters in Redis (retries, lock conflicts), read by the load-test report.

Counters are incremented only on rare events (a lost race, a lock timeout), never per request.
"""

from __future__ import annotations

import logging

from django_redis import get_redis_connection

logger = logging.getLogger(__name__)
METRICS_KEY = "metrics:counters"


def count(name: str, amount: int = 1) -> None:
    try:
        get_redis_connection("default").hincrby(METRICS_KEY, name, amount)
    except Exception:  # a lost counter must never fail an order
        logger.warning("could not count %s", name, exc_info=True)


def read_all() -> dict[str, int]:
    raw = get_redis_connection("default").hgetall(METRICS_KEY)
    return {key.decode(): int(value) for key, value in raw.items()}


def reset() -> None:
    get_redis_connection("default").delete(METRICS_KEY)
