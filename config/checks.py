"""`manage.py check --deploy` fails on what a deployment must not run with, and warns about what
it should not."""

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.db import DatabaseError
from django_redis import get_redis_connection

from accounts.development import development_password_holders


@register(Tags.security, deploy=True)
def development_secret_key(app_configs, **kwargs) -> list[Error]:
    if not settings.SECRET_KEY_IS_DEVELOPMENT:
        return []
    return [
        Error(
            "SECRET_KEY is not set: a development key made for this checkout signs admin sessions and CSRF tokens.",
            hint="Set SECRET_KEY in the environment or in .env.",
            id="config.E001",
        )
    ]


@register(Tags.security, deploy=True)
def development_password_in_use(app_configs, **kwargs) -> list[Error]:
    """`make run` gives the seeded customers one development password (accounts/development.py),
    printed on its console: whoever read it signs in as any of them. A database this check
    cannot reach is not its to report (migrate and /readyz say so)."""
    try:
        holders = development_password_holders()
    except DatabaseError:
        return []
    if not holders:
        return []
    return [
        Error(
            f"{holders} user(s) sign in with the development password `make run` gave the seeded customers.",
            hint="Reseed (manage.py seed_loadtest leaves customers without a password) or give each user a "
            "password of their own (manage.py changepassword).",
            id="config.E003",
        )
    ]


@register(Tags.security, deploy=True)
def metrics_guarded_by_more_than_loopback(app_configs, **kwargs) -> list[Warning]:
    """/metrics (stock levels, order rates, error counts) answers loopback callers without a
    token; behind a reverse proxy on the same host, every client is a loopback caller."""
    if not settings.METRICS_ALLOW_LOOPBACK or settings.METRICS_TOKEN:
        return []
    return [
        Warning(
            "/metrics answers every caller on loopback and METRICS_TOKEN is not set: behind a proxy on "
            "this host, every client comes from loopback and can read the metrics.",
            hint="Set METRICS_TOKEN and METRICS_ALLOW_LOOPBACK=false, or keep /metrics off the proxy.",
            id="config.W003",
        )
    ]


@register("redis", deploy=True)
def redis_never_evicts(app_configs, **kwargs) -> list[Error | Warning]:
    """Redis holds live stock, reservations, the Celery queue and the sales counters: a key
    evicted under memory pressure is a reservation or a task lost, not a cache miss."""
    try:
        policy = get_redis_connection("default").info("memory").get("maxmemory_policy")
    except Exception as exc:  # a check reports, it does not crash the command
        return [Warning(f"Could not ask Redis for its maxmemory-policy: {exc}", id="config.W002")]
    if policy == "noeviction":
        return []
    return [
        Error(
            f"Redis runs with maxmemory-policy {policy}: it may evict stock counts, reservations or queued tasks.",
            hint="Set maxmemory-policy noeviction in the Redis configuration (CONFIG SET or redis.conf).",
            id="config.E002",
        )
    ]
