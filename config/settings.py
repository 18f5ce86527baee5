"""Settings, all from the environment (django-environ), with defaults for development.

Unset DATABASE_URL / REDIS_URL mean "the project's own servers" (config/local.py; started by
devtools/devservers.py).
"""

import logging
import re

from csp.constants import NONE as CSP_NONE
from csp.constants import SELF as CSP_SELF
from django.core.exceptions import ImproperlyConfigured

from config import local
from config.env import BASE_DIR, env, redis_url_with_db

TESTING = env.bool("SHOP_TESTING", default=False)
# The process of a load run that starts its own servers (`manage.py loadtest` without --url sets
# it for itself, loadtest/management/commands/loadtest.py): its own database, Redis db and tokens
# file below, beside the ones `make run` serves, which reseeding would replace. Tests keep theirs.
LOADTEST = env.bool("SHOP_LOADTEST", default=False) and not TESTING

DEBUG = env.bool("DEBUG", default=False)

SECRET_KEY = env.str("SECRET_KEY", default="")
# Without SECRET_KEY, only a developer's machine starts: tests (a fixed key), DEBUG on or the
# project's own PostgreSQL (DATABASE_URL unset, as under `make run`), which get a random key
# made once for this checkout (`make run` says so). check --deploy fails on either. Anything
# else refuses to start rather than sign sessions and CSRF tokens with a key nobody chose.
SECRET_KEY_IS_DEVELOPMENT = not SECRET_KEY
if SECRET_KEY_IS_DEVELOPMENT and TESTING:
    SECRET_KEY = "tests-only-secret-key-never-deployed"
elif SECRET_KEY_IS_DEVELOPMENT:
    if not (DEBUG or local.uses_own_database()):
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set it in the environment or in .env (for example the output of "
            "`python -c 'import secrets; print(secrets.token_urlsafe(50))'`); it signs sessions and CSRF tokens. "
            "Only DEBUG, tests or the project's own development PostgreSQL (DATABASE_URL unset) start without it."
        )
    SECRET_KEY = local.development_secret_key()
ALLOWED_HOSTS = [
    host.strip() for host in env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver", "[::1]"])
]
CSRF_TRUSTED_ORIGINS = [origin.strip() for origin in env.list("CSRF_TRUSTED_ORIGINS", default=[])]

# --- HTTPS ------------------------------------------------------------------------------
# Off by default, for `make run`'s plain HTTP on loopback; a deployment behind TLS turns them on
# (docs/security.md), and `check --deploy` names each one left off.
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
# The header a TLS-terminating proxy sets, e.g. X-Forwarded-Proto, read as "https" means secure.
# Unset by default: trusted without such a proxy, any client could claim HTTPS by sending it.
_PROXY_SSL_HEADER = env.str("SECURE_PROXY_SSL_HEADER", default="").strip()
if _PROXY_SSL_HEADER and not re.fullmatch(r"[A-Za-z0-9-]+", _PROXY_SSL_HEADER):
    raise ImproperlyConfigured(
        f"SECURE_PROXY_SSL_HEADER={_PROXY_SSL_HEADER!r}: give the header's name only, e.g. X-Forwarded-Proto"
    )
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_" + _PROXY_SSL_HEADER.upper().replace("-", "_"), "https") if _PROXY_SSL_HEADER else None
)
# HSTS makes browsers refuse plain HTTP for this long: 0 (off) until HTTPS is known to work.
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
# Where every request is redirected to HTTPS, cookies are HTTPS-only unless said otherwise.
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=SECURE_SSL_REDIRECT)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=SECURE_SSL_REDIRECT)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "csp",
    "config",
    "ops",  # the operator page's static files and its beat task
    "accounts",
    "inventory",
    "coupons",
    "payments",
    "orders",
    "loadtest",
]

MIDDLEWARE = [
    "kernel.request_id.RequestIdMiddleware",
    "ops.metrics_api.HttpMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "kernel.middleware.ContentSecurityPolicyMiddleware",
    "kernel.middleware.RequestSizeLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
# The JSON API's chain (config/wsgi.py): the same order, without what only pages use.
_PAGES_ONLY_MIDDLEWARE = {
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
}
API_MIDDLEWARE = [path for path in MIDDLEWARE if path not in _PAGES_ONLY_MIDDLEWARE]

# Django's standard four: not like the username, at least 8 characters, not one of 20,000 common
# passwords, not all digits. They apply where a person picks a password (the admin's forms,
# `manage.py changepassword` and `createsuperuser`); code that sets one directly (make run's
# generated admin password, test factories) is not checked.
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
AUTH_USER_MODEL = "accounts.User"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


# --- PostgreSQL -------------------------------------------------------------------------
def _prepare_threshold(value: str) -> int | None:
    return None if value.strip().lower() in ("none", "off") else int(value)


# An empty DATABASE_URL / REDIS_URL means unset, as for the launcher (devtools/local.py).
DATABASES = {"default": env.db_url_config(local.configured_database_url())}
if LOADTEST:
    # Read here, in the runner's process alone: what it starts gets DATABASE_URL naming this
    # database and no SHOP_LOADTEST (loadtest/server.py), so no suffix is added twice.
    DATABASES["default"]["NAME"] = env.str("LOADTEST_DATABASE_NAME", default=f"{DATABASES['default']['NAME']}_loadtest")
# Persistent connections: one per gunicorn worker thread, checked before reuse. A statement
# timeout bounds every transaction on the order path, which reconciliation relies on.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=600)
# A health check costs a round trip on every request; without it a connection broken by a
# database restart fails one request with a 503, and Django then reconnects.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = env.bool("DB_CONN_HEALTH_CHECKS", default=False)
DATABASES["default"].setdefault("OPTIONS", {})
DATABASES["default"]["OPTIONS"].update(
    {
        "connect_timeout": 5,
        # Server-side binding and a prepare threshold let psycopg prepare each statement after
        # a few runs: PostgreSQL then stops parsing and planning the order path's statements on
        # every order (Django leaves preparing off unless asked, for the sake of poolers; set
        # DB_PREPARE_THRESHOLD=none behind PgBouncer in transaction mode before 1.21).
        "server_side_binding": env.bool("DB_SERVER_SIDE_BINDING", default=True),
        "prepare_threshold": _prepare_threshold(env.str("DB_PREPARE_THRESHOLD", default="5")),
        "options": "-c statement_timeout={} -c idle_in_transaction_session_timeout={}".format(
            env.int("DB_STATEMENT_TIMEOUT_MS", default=10_000),
            env.int("DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", default=30_000),
        ),
    }
)
DATABASES["default"]["TEST"] = {"NAME": "test_shop"}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis ------------------------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="") or local.default_redis_url()
TEST_REDIS_DB = 15
LOADTEST_REDIS_DB = 14
if TESTING:
    # Tests never touch the development keyspace: their own logical database.
    REDIS_URL = env.str("REDIS_TEST_URL", default=redis_url_with_db(REDIS_URL, TEST_REDIS_DB))
elif LOADTEST:
    # Nor does a load run: stock, reservations and its Celery queue live in a keyspace of its own.
    REDIS_URL = env.str("REDIS_LOADTEST_URL", default=redis_url_with_db(REDIS_URL, LOADTEST_REDIS_DB))
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "OPTIONS": {
            "CLIENT_CLASS": "django_redis.client.DefaultClient",
            "SOCKET_CONNECT_TIMEOUT": 2,
            "SOCKET_TIMEOUT": 2,
            "CONNECTION_POOL_KWARGS": {"max_connections": 200, "health_check_interval": 30},
        },
        "KEY_PREFIX": "cache",
    }
}

# --- Domain settings --------------------------------------------------------------------
# Reservations older than this, still unresolved, are settled by reconciliation: released
# if their order never committed. Longer than any order transaction can live.
STOCK_RESERVATION_GRACE_SECONDS = env.int("STOCK_RESERVATION_GRACE_SECONDS", default=60)
# Where stock lives (docs/redis-cluster.md): "" the one Redis of REDIS_URL; "local" the
# project's own Redis Cluster (devtools/redis_cluster.py); else the seed nodes of a Redis
# Cluster, comma-separated redis:// URLs (the password in each). Rate counters, the intake and
# Celery stay on REDIS_URL.
STOCK_REDIS_CLUSTER = env.str("STOCK_REDIS_CLUSTER", default="")
if STOCK_REDIS_CLUSTER == "local":
    # A load run of its own has a cluster of its own, as it has a database and a Redis db.
    STOCK_REDIS_CLUSTER_NODES = local.default_redis_cluster_urls(
        base_port=local.LOADTEST_REDIS_CLUSTER_PORT if LOADTEST else local.REDIS_CLUSTER_PORT
    )
else:
    STOCK_REDIS_CLUSTER_NODES = [url.strip() for url in STOCK_REDIS_CLUSTER.split(",") if url.strip()]
# How many shards stock is spread over (inventory/shards.py): 1 on a single Redis, 6 on a
# cluster (two per master of three). Change it only with the service stopped; the next start
# rebuilds every shard.
STOCK_SHARDS = env.int("STOCK_SHARDS", default=6 if STOCK_REDIS_CLUSTER_NODES else 1)
if STOCK_SHARDS < 1:
    raise ValueError(f"STOCK_SHARDS must be 1 or more, not {STOCK_SHARDS}")
if STOCK_REDIS_CLUSTER_NODES and STOCK_SHARDS < 2:
    # One shard's keys carry no hash tag: on a cluster they would fall in different slots.
    raise ValueError("STOCK_REDIS_CLUSTER needs STOCK_SHARDS of 2 or more")
BALANCE_UPDATE_MAX_ATTEMPTS = env.int("BALANCE_UPDATE_MAX_ATTEMPTS", default=30)
BALANCE_UPDATE_BACKOFF_MS = env.int("BALANCE_UPDATE_BACKOFF_MS", default=2)
# API tokens (accounts/authentication.py, docs/security.md "Tokens"): a request's token is read
# from the Redis token map (auth:token:<hash>, expiring with the token), the database only when
# Redis lost the entry or does not answer; a revocation takes effect at once. Tokens last
# TOKEN_LIFETIME_DAYS.
TOKEN_LIFETIME_DAYS = env.int("TOKEN_LIFETIME_DAYS", default=30)
# Logins (POST /api/v1/auth/token and the admin's): attempts per fixed window, per username and
# per client address.
LOGIN_RATE_LIMIT_WINDOW_SECONDS = env.int("LOGIN_RATE_LIMIT_WINDOW_SECONDS", default=60)
LOGIN_RATE_LIMIT_PER_USERNAME = env.int("LOGIN_RATE_LIMIT_PER_USERNAME", default=10)
LOGIN_RATE_LIMIT_PER_IP = env.int("LOGIN_RATE_LIMIT_PER_IP", default=30)  # an IPv6 /64 is one address
# Failed logins of everyone together per window, API and admin (docs/security.md "Tokens"): past
# it every login is refused until the window ends; 0 turns it off. A credential-stuffing wave
# tries each username once from ever new addresses, which the two limits above do not see.
LOGIN_FAILED_GLOBAL_LIMIT = env.int("LOGIN_FAILED_GLOBAL_LIMIT", default=1_000)
# Admin changes of money and stock (docs/security.md "Admin"): the most one change may move,
# either way (balances in minor units: 100,000.00; stock in units). A change past it is a form
# error: three zeros too many are refused, not booked.
ADMIN_BALANCE_ADJUST_MAX = env.int("ADMIN_BALANCE_ADJUST_MAX", default=10_000_000)
ADMIN_STOCK_ADJUST_MAX = env.int("ADMIN_STOCK_ADJUST_MAX", default=1_000_000)
# A credit above this (minor units: 1,000.00) waits for a second admin's approval; 0: every one.
ADMIN_CREDIT_APPROVAL_THRESHOLD = env.int("ADMIN_CREDIT_APPROVAL_THRESHOLD", default=100_000)
# POST /api/v1/orders (orders/limits.py, docs/security.md "Limits"): orders per fixed window, per
# user and per client address, counted in the reservation's own Redis call; 0 turns one off.
# The seed's load test (500 users, ~650 orders/s, all from 127.0.0.1) averages 13 orders per
# user per 10 s: 60 leaves it far from the limit, and a per-address limit would stop it at once,
# hence off unless set (set it where clients' addresses are their own, not a proxy's).
ORDER_RATE_LIMIT_WINDOW_SECONDS = env.int("ORDER_RATE_LIMIT_WINDOW_SECONDS", default=10)
ORDER_RATE_LIMIT_PER_USER = env.int("ORDER_RATE_LIMIT_PER_USER", default=60)
ORDER_RATE_LIMIT_PER_IP = env.int("ORDER_RATE_LIMIT_PER_IP", default=0)
# Unpaid asynchronous orders (PENDING_PAYMENT) one user may have at once; 0: no cap. Settlers
# pay within milliseconds; at PAYMENT_BACKLOG_MAX_SECONDS (5 s) behind, a load-test user has
# about 7 waiting.
ORDER_UNPAID_LIMIT_PER_USER = env.int("ORDER_UNPAID_LIMIT_PER_USER", default=20)
# How long after it was placed a paid order may be cancelled (and refunded) by its buyer.
ORDER_CANCEL_WINDOW_SECONDS = env.int("ORDER_CANCEL_WINDOW_SECONDS", default=24 * 3600)
# The example sales consumer remembers applied event ids this long (orders/sales_counter.py).
SALES_SEEN_EVENTS_RETENTION_SECONDS = env.int("SALES_SEEN_EVENTS_RETENTION_SECONDS", default=24 * 3600)
IDEMPOTENCY_KEY_TTL_HOURS = max(24, env.int("IDEMPOTENCY_KEY_TTL_HOURS", default=48))  # kept 24 h at least
# Keys one user may hold at once (answered or in progress, within the TTL): a new key past it is
# refused (429 TOO_MANY_IDEMPOTENCY_KEYS). A shopper's retries need a handful.
IDEMPOTENCY_KEYS_PER_USER = max(1, env.int("IDEMPOTENCY_KEYS_PER_USER", default=1_000))
# A duplicate waits this long for the first request's answer; a key left in progress by a
# crashed process is taken over after IDEMPOTENCY_STALE_SECONDS (by the database's clock); keep it
# above the longest an order can take (DB_STATEMENT_TIMEOUT_MS bounds each statement).
IDEMPOTENCY_WAIT_SECONDS = env.float("IDEMPOTENCY_WAIT_SECONDS", default=10.0)
IDEMPOTENCY_STALE_SECONDS = env.float("IDEMPOTENCY_STALE_SECONDS", default=60.0)
# --- Retention of what grows with every order (docs/retention.md) -------------------------
# Published outbox events (orders_orderevent); unpublished ones are never trimmed. An order older
# than this shows no progress steps any more (its status and times stay).
ORDER_EVENTS_RETENTION_DAYS = env.int("ORDER_EVENTS_RETENTION_DAYS", default=7)
# The Redis stream `orders:events`: at most about this many entries (on every publish) and
# none older than ORDER_EVENTS_STREAM_RETENTION_HOURS (trimmed hourly); a consumer down longer
# than that rebuilds from the outbox table, which is kept longer.
ORDER_EVENTS_STREAM_MAX_LENGTH = env.int("ORDER_EVENTS_STREAM_MAX_LENGTH", default=1_000_000)
ORDER_EVENTS_STREAM_RETENTION_HOURS = env.int("ORDER_EVENTS_STREAM_RETENTION_HOURS", default=24)
# Settled reservations (inventory_stockreservation, one per order and one per release). The row is
# what keeps a late sale and a release apart, so it is kept far longer than any order transaction
# can live (an hour and ten grace periods at least), and never while Redis still tracks a
# reservation as old as it (inventory_trim_reservations).
STOCK_RESERVATION_RETENTION_SECONDS = max(
    3600, 10 * STOCK_RESERVATION_GRACE_SECONDS, env.int("STOCK_RESERVATION_RETENTION_SECONDS", default=24 * 3600)
)
# Each trimming statement deletes at most this many rows (its own short transaction); a run
# stops after the budget and leaves the rest to the next run (kernel/retention.py).
RETENTION_BATCH_SIZE = env.int("RETENTION_BATCH_SIZE", default=5_000)
RETENTION_TIME_BUDGET_SECONDS = env.float("RETENTION_TIME_BUDGET_SECONDS", default=60.0)
MAX_ORDER_ITEMS = env.int("MAX_ORDER_ITEMS", default=100)
MAX_ITEM_QUANTITY = env.int("MAX_ITEM_QUANTITY", default=10_000)
MAX_REQUEST_BYTES = env.int("MAX_REQUEST_BYTES", default=64 * 1024)
# An oversized body is read and dropped up to this many bytes before its 413, so the client is
# sure to read the answer (kernel/middleware.py); one header may be at most MAX_REQUEST_HEADER_BYTES
# (gunicorn lets larger ones through to be answered here: GUNICORN_LIMIT_REQUEST_FIELD_SIZE).
MAX_DRAINED_REQUEST_BYTES = env.int("MAX_DRAINED_REQUEST_BYTES", default=10 * 1024 * 1024)
MAX_REQUEST_HEADER_BYTES = env.int("MAX_REQUEST_HEADER_BYTES", default=8 * 1024)
# "new": Redis reservation + balance retry. "old": the report's design, kept for comparison:
# a Redis lock per product around a database decrement, and no balance retry.
ORDER_STRATEGY = env.str("ORDER_STRATEGY", default="new")
if ORDER_STRATEGY not in ("new", "old"):
    raise ValueError(f"ORDER_STRATEGY must be 'new' or 'old', not {ORDER_STRATEGY!r}")
# The seeded customers' tokens, which k6 reads: `make run`'s seed writes loadtest/tokens.json (for
# k6 run by hand against it); a load run of its own, and tests, each write a file of their own.
if LOADTEST:
    # Not LOADTEST_TOKENS_PATH, which may name `make run`'s file.
    LOADTEST_TOKENS_PATH = env.path("LOADTEST_RUN_TOKENS_PATH", default=str(local.DATA_DIR / "loadtest-tokens.json"))
else:
    LOADTEST_TOKENS_PATH = env.path(
        "LOADTEST_TOKENS_PATH",
        default=str(local.DATA_DIR / "test-tokens.json" if TESTING else BASE_DIR / "loadtest" / "tokens.json"),
    )
LEGACY_LOCK_RETRY_MS = env.int("LEGACY_LOCK_RETRY_MS", default=100)
LEGACY_LOCK_WAIT_MS = env.int("LEGACY_LOCK_WAIT_MS", default=3_000)
LEGACY_LOCK_TTL_MS = env.int("LEGACY_LOCK_TTL_MS", default=10_000)

# --- Asynchronous payment (batch settlement) and periodic jobs (Celery beat) ------------
# Simulates an external payment call, once per settlement batch (0: none). The web shop demo
# sets it so the progress bar has something to show.
PAYMENT_GATEWAY_LATENCY_MS = env.int("PAYMENT_GATEWAY_LATENCY_MS", default=0)
ORDER_PAYMENT_TIMEOUT_SECONDS = env.int("ORDER_PAYMENT_TIMEOUT_SECONDS", default=15 * 60)
# Orders one settler pays per transaction at most (it takes what is waiting, up to this).
SETTLE_BATCH_SIZE = env.int("SETTLE_BATCH_SIZE", default=500)
# After a batch that was not full, a settler lets orders gather this long before the next one:
# fewer, fuller batches (less CPU per order) for a little time to PAID.
SETTLE_BATCH_WINDOW_MS = env.int("SETTLE_BATCH_WINDOW_MS", default=50)
# A batch that fails for a reason other than the database going away is settled again one
# order at a time; an order that fails alone this many times in a row is cancelled (set aside).
SETTLE_ORDER_MAX_TRIES = env.int("SETTLE_ORDER_MAX_TRIES", default=3)
# An idle settler is woken by each new order (the intake stream); it also looks in the database
# every this many seconds.
SETTLE_IDLE_WAIT_SECONDS = env.float("SETTLE_IDLE_WAIT_SECONDS", default=1.0)
# Where the usual asynchronous order (no coupon, no Idempotency-Key) is accepted: "redis", the
# intake (one Redis script, no SQL in the request: orders/intake.py), or "database", the order
# and its sale written by the request and the settlers paying it from there (the design before,
# kept to compare against). Orders with a coupon or an Idempotency-Key take the database's path.
ORDER_ASYNC_INTAKE = env.str("ORDER_ASYNC_INTAKE", default="redis")
if ORDER_ASYNC_INTAKE not in ("redis", "database"):
    raise ValueError(f"ORDER_ASYNC_INTAKE must be 'redis' or 'database', not {ORDER_ASYNC_INTAKE!r}")
# When Redis goes away during the intake's script, the request does not know whether the order
# was accepted: it waits this long for Redis to answer the question (orders/intake.py).
INTAKE_LOST_REPLY_WAIT_SECONDS = env.float("INTAKE_LOST_REPLY_WAIT_SECONDS", default=5.0)
# Order ids the intake takes from PostgreSQL's sequence at a time (one statement per block).
ORDER_ID_BLOCK_SIZE = env.int("ORDER_ID_BLOCK_SIZE", default=1000)
# An intake entry a settler took and has not acknowledged for this long (it died, or hangs) is
# taken over by another; the database's unique order id keeps a slow one from writing it twice.
SETTLE_CLAIM_IDLE_MS = env.int("SETTLE_CLAIM_IDLE_MS", default=5000)
# Crash drills only: a settler sleeps this long between a batch's commit and its acknowledgement,
# the window in which a settler killed leaves entries another must take over (0: none).
SETTLE_PAUSE_BEFORE_ACK_SECONDS = env.float("SETTLE_PAUSE_BEFORE_ACK_SECONDS", default=0.0)
# New asynchronous orders are refused (503, Retry-After) while the oldest unpaid order has
# waited longer than this; each web thread looks again at most every CHECK seconds.
PAYMENT_BACKLOG_MAX_SECONDS = env.float("PAYMENT_BACKLOG_MAX_SECONDS", default=5.0)
PAYMENT_BACKLOG_CHECK_SECONDS = env.float("PAYMENT_BACKLOG_CHECK_SECONDS", default=0.25)
CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
# An unacknowledged task (its worker died) goes back to the queue after the visibility
# timeout; workers sweep for such tasks every 5 s (kombu's default is about 100 s).
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT_SECONDS", default=60),
    "unacked_restore_interval": 5,
    "unacked_restore_throttle": 1,
}
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULE = {
    "relay-order-events": {"task": "orders.tasks.relay_order_events", "schedule": 1.0},
    "expire-pending-orders": {"task": "orders.tasks.expire_pending_orders", "schedule": 60.0},
    "reconcile-inventory": {"task": "inventory.tasks.reconcile_inventory", "schedule": 60.0},
    # Keeps Redis' set of tracked reservations to the last seconds' orders (inventory_forget_sold).
    "forget-sold-reservations": {"task": "inventory.tasks.forget_sold_reservations", "schedule": 5.0},
    # Retention (docs/retention.md): each trims in batches, hourly.
    "purge-idempotency-keys": {"task": "orders.tasks.purge_idempotency_keys", "schedule": 3600.0},
    "trim-order-events": {"task": "orders.tasks.trim_order_events", "schedule": 3600.0},
    "trim-stock-reservations": {"task": "inventory.tasks.trim_stock_reservations", "schedule": 3600.0},
    "record-operator-history": {
        "task": "config.tasks.record_operator_history",
        "schedule": float(env.int("OPERATOR_HISTORY_INTERVAL_SECONDS", default=5)),
    },
}
# The operator page's chart starts from the last OPERATOR_HISTORY_POINTS snapshots beat recorded
# (10 minutes at one every 5 s; each costs one scrape of the metrics in the beat worker).
OPERATOR_HISTORY_POINTS = env.int("OPERATOR_HISTORY_POINTS", default=120)
CELERY_BEAT_SCHEDULE_FILENAME = str(local.DATA_DIR / "celerybeat-schedule")

# --- API --------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.authentication.BearerTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["kernel.json.OrjsonRenderer"],
    "DEFAULT_PARSER_CLASSES": ["kernel.json.OrjsonParser"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "kernel.json.JsonContentNegotiation",
    "DEFAULT_SCHEMA_CLASS": "kernel.schema.AutoSchema",  # every answer documented, errors too
    "EXCEPTION_HANDLER": "kernel.errors.api_exception_handler",
    "DEFAULT_PAGINATION_CLASS": "kernel.pagination.PageNumbers",
    "PAGE_SIZE": 20,
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Flash-sale order service",
    "DESCRIPTION": "Orders, stock, coupons and balance payments that hold up under a flash sale.",
    "VERSION": "1.0.0",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {"OrderStatusEnum": "orders.models.OrderStatus"},
    # Ids in paths (config/urls.py's IdConverter) as the integers the bodies carry.
    "PATH_CONVERTER_OVERRIDES": {"id": {"type": "integer", "minimum": 1, "maximum": 10**18 - 1}},
}

# --- Content-Security-Policy (django-csp) ------------------------------------------------
# Every page (the shop, the admin) runs only scripts and styles served from this origin's static
# files: no inline script, no inline style, no eval. An injected <img onerror> or <script> in a
# product name does nothing even if some code ever put it into markup. The API docs pages get a
# little more (config/urls.py), the JSON API a policy that allows nothing (kernel/middleware.py).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [CSP_SELF],
        "script-src": [CSP_SELF],
        "style-src": [CSP_SELF],
        "img-src": [CSP_SELF, "data:"],
        "connect-src": [CSP_SELF],
        "object-src": [CSP_NONE],
        "base-uri": [CSP_NONE],
        "form-action": [CSP_SELF],
        "frame-ancestors": [CSP_NONE],
    },
}

# --- Metrics (kernel/metrics.py, GET /metrics) -------------------------------------------
# Every process's values live in this directory (prometheus_client's multiprocess mode). Set
# in the environment here, before anything imports the client, so the children inherit it.
PROMETHEUS_MULTIPROC_DIR = str(local.metrics_dir())
# The per-request counters and latency histogram; off to measure what they cost.
METRICS_ENABLED = env.bool("METRICS_ENABLED", default=True)
# /metrics answers loopback callers, and others that send `Authorization: Bearer <token>`.
# Behind a proxy on the same host every caller looks like loopback: set the token and turn
# METRICS_ALLOW_LOOPBACK off (check --deploy warns while loopback alone guards it, config.W003).
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_ALLOW_LOOPBACK = env.bool("METRICS_ALLOW_LOOPBACK", default=True)
# Gauges read at scrape time (state, not events), each app's own.
METRICS_COLLECTORS = ["inventory.metrics.StockCollector", "orders.metrics.OrdersCollector"]
# The ledger's stock per product is a sum over every movement (0.5 s at 2 million): summed at
# most this often for all processes together (0: at every scrape).
STOCK_LEDGER_GAUGE_SECONDS = env.float("STOCK_LEDGER_GAUGE_SECONDS", default=15.0)
# /metrics has stock per product for the products with the fewest units left, at most this
# many; the operator page lists the first OPERATOR_STOCK_ROWS of them.
METRICS_STOCK_PRODUCTS = env.int("METRICS_STOCK_PRODUCTS", default=100)
OPERATOR_STOCK_ROWS = min(env.int("OPERATOR_STOCK_ROWS", default=20), METRICS_STOCK_PRODUCTS)

# --- Static files (admin CSS/JS under gunicorn) -----------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]  # the web shop's script and styles
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
if TESTING:
    STORAGES["staticfiles"] = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# --- Logging ----------------------------------------------------------------------------
# gunicorn takes the same variable in lower case; logging wants a known name in upper case.
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").strip().upper()
if not isinstance(logging.getLevelName(LOG_LEVEL), int):
    raise ImproperlyConfigured(f"LOG_LEVEL={LOG_LEVEL!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL")
# LOG_FORMAT=json: one JSON object per line (kernel/request_id.py); plain text otherwise.
LOG_FORMAT = env.str("LOG_FORMAT", default="plain").strip().lower()
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r}: use plain or json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "kernel.request_id.RequestIdFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(process)d %(name)s [%(request_id)s]: %(message)s"},
        "json": {"()": "kernel.request_id.JsonFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["request_id"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "django.request": {"level": "ERROR"},
    },
}
