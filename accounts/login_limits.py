"""Login attempts per username and per client address, and failed logins for everyone: fixed
windows counted in Redis, so the limits hold across workers and hosts.

Each attempt is counted before the password is checked, so a limited attempt costs no password
hash either. A window is LOGIN_RATE_LIMIT_WINDOW_SECONDS of the application clock; hosts whose
clocks differ by a second share a window but for that second. If Redis does not answer, the
login is refused (503, by the one error handler): no unlimited guessing while it is away.

An IPv6 client counts by its /64: that is what one customer line (or one cloud host) is given,
so the single addresses within it cost an attacker nothing. Failed logins of everyone together
are capped at LOGIN_FAILED_GLOBAL_LIMIT per window (0: no cap): a credential-stuffing wave tries
each username once from ever new addresses, which neither per-username nor per-address limit
sees; past the cap every login is refused until the window ends. Attempts that pass the check
together may take the failures a few past the cap (each is counted once it failed).
"""

from __future__ import annotations

import ipaddress
import math
import time

from django.conf import settings
from django_redis import get_redis_connection

from accounts.errors import LoginRateLimited

_PREFIX = "ratelimit:login"


def login_attempt_count(*, username: str, client_ip: str) -> None:
    """Count one login attempt; raise LoginRateLimited (429, Retry-After: the window's end) when
    the username's or the address's count in this window is over its limit, or when the window
    has seen LOGIN_FAILED_GLOBAL_LIMIT failed logins already."""
    window = settings.LOGIN_RATE_LIMIT_WINDOW_SECONDS
    now = time.time()
    index = int(now // window)
    limits = {
        "username": (f"{_PREFIX}:user:{index}:{username}", settings.LOGIN_RATE_LIMIT_PER_USERNAME),
        "ip": (f"{_PREFIX}:ip:{index}:{address_counted(client_ip)}", settings.LOGIN_RATE_LIMIT_PER_IP),
    }
    pipe = get_redis_connection("default").pipeline(transaction=False)  # one round trip
    for key, _ in limits.values():
        pipe.incr(key)
        pipe.expire(key, window + 1)
    pipe.get(_failed_key(index))
    *counted, failed = pipe.execute()
    over = [(scope, limit) for (scope, (_, limit)), count in zip(limits.items(), counted[0::2], strict=True)
            if count > limit]  # fmt: skip
    global_limit = settings.LOGIN_FAILED_GLOBAL_LIMIT
    if global_limit and int(failed or 0) >= global_limit:
        over.append(("global", global_limit))
    if over:
        scope, limit = over[0]
        raise LoginRateLimited(
            details={"scope": scope, "limit": limit, "windowSeconds": window},
            retry_after=max(1, math.ceil((index + 1) * window - now)),
        )


def login_failure_count() -> None:
    """Count one failed login (a wrong password, an unknown or inactive user) for the global cap."""
    window = settings.LOGIN_RATE_LIMIT_WINDOW_SECONDS
    key = _failed_key(int(time.time() // window))
    pipe = get_redis_connection("default").pipeline(transaction=False)
    pipe.incr(key)
    pipe.expire(key, window + 1)
    pipe.execute()


def address_counted(client_ip: str) -> str:
    """The address an attempt counts against: an IPv4 address, an IPv6 address's /64 network,
    the IPv4 address inside an IPv4-mapped IPv6 one; anything else as given."""
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return client_ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(address), 64), strict=False))
    return str(address)


def _failed_key(index: int) -> str:
    return f"{_PREFIX}:failed:{index}"
