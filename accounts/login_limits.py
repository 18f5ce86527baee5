"""Login attempts per username and per client address: fixed windows counted in Redis, so the
limit holds across workers and hosts.

Each attempt is counted before the password is checked, so a limited attempt costs no password
hash either. A window is LOGIN_RATE_LIMIT_WINDOW_SECONDS of the application clock; hosts whose
clocks differ by a second share a window but for that second. If Redis does not answer, the
login is refused (503, by the one error handler): no unlimited guessing while it is away.
"""

from __future__ import annotations

import math
import time

from django.conf import settings
from django_redis import get_redis_connection

from accounts.errors import LoginRateLimited

_PREFIX = "ratelimit:login"


def login_attempt_count(*, username: str, client_ip: str) -> None:
    """Count one login attempt; raise LoginRateLimited (429, Retry-After: the window's end) when
    either the username's or the address's count in this window is over its limit."""
    window = settings.LOGIN_RATE_LIMIT_WINDOW_SECONDS
    now = time.time()
    index = int(now // window)
    limits = {
        "username": (f"{_PREFIX}:user:{index}:{username}", settings.LOGIN_RATE_LIMIT_PER_USERNAME),
        "ip": (f"{_PREFIX}:ip:{index}:{client_ip}", settings.LOGIN_RATE_LIMIT_PER_IP),
    }
    pipe = get_redis_connection("default").pipeline(transaction=False)  # one round trip
    for key, _ in limits.values():
        pipe.incr(key)
        pipe.expire(key, window + 1)
    counts = pipe.execute()[0::2]
    for (scope, (_, limit)), count in zip(limits.items(), counts, strict=True):
        if count > limit:
            raise LoginRateLimited(
                details={"scope": scope, "limit": limit, "windowSeconds": window},
                retry_after=max(1, math.ceil((index + 1) * window - now)),
            )
