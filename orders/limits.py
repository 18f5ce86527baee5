"""The limits on placing orders: rate limits per user and per client address, and the cap on
one user's unpaid asynchronous orders. Policy and key names live here; inventory's reservation
script only sees generic admission counters (inventory.redis_counts.AdmissionCounter).

Why the rate counters run inside the reservation script: the usual order costs one Redis call
and one SQL statement (orders/tests/test_round_trips.py counts them), and a rate limiter of its
own would add a round trip to every order. The script counts the attempt (fixed window: INCR,
and PEXPIRE on the window's first count) before it touches stock, so a refused order reserves
nothing. Counted in Redis, the limits hold across workers and hosts; the window starts with a
key's first count (Redis' clock), so hosts' clocks do not matter. Every attempt counts, admitted
or not, out of stock or not: a bot that keeps sending stays refused until its window ends.
"""

from __future__ import annotations

from django.conf import settings

from inventory.redis_counts import AdmissionCounter

_PREFIX = "ratelimit:orders"


def order_admission_counters(*, user_id: int, client_ip: str) -> tuple[AdmissionCounter, ...]:
    """The counters an order must pass: per user, and per client address (off by default:
    behind a proxy or a load generator every customer has one address). A limit of 0 is off."""
    window_ms = settings.ORDER_RATE_LIMIT_WINDOW_SECONDS * 1000
    counters = []
    if settings.ORDER_RATE_LIMIT_PER_USER:
        counters.append(AdmissionCounter(f"{_PREFIX}:user:{user_id}", settings.ORDER_RATE_LIMIT_PER_USER, window_ms,
                                         "user"))  # fmt: skip
    if settings.ORDER_RATE_LIMIT_PER_IP and client_ip:
        counters.append(AdmissionCounter(f"{_PREFIX}:ip:{client_ip}", settings.ORDER_RATE_LIMIT_PER_IP, window_ms,
                                         "ip"))  # fmt: skip
    return tuple(counters)


def unpaid_orders_cap() -> int | None:
    """How many PENDING_PAYMENT orders one user may have at once (None: no cap)."""
    return settings.ORDER_UNPAID_LIMIT_PER_USER or None
