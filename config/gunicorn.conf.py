"""gunicorn settings for `make run` and the load-test runner; every value can be overridden
from the environment (GUNICORN_WORKERS, GUNICORN_THREADS, GUNICORN_WORKER_CLASS, BIND).

Sync workers, one per request at a time: the order path is CPU-bound Python plus short waits on
PostgreSQL and Redis, and on this 2-core box measured faster with 4 sync workers than with
fewer workers running threads (threads wait for the GIL while holding open transactions).
Measured again after the order path got leaner (100 VUs, 40 s, two rounds): 3 workers 321 and
276 req/s, 4 workers 324 and 281, 5 workers 272 and 265. gthread with keep-alive (4 x 1) gave
299 req/s against 269 for sync in one pair (within this box's noise), with p99 840 ms against
475 ms, likely because a kept-alive connection stays with the worker that accepted it.
"""

import multiprocessing
import sys
from pathlib import Path

# The variables are read as Django reads them (config/env.py: .env, empty means unset), so the
# project's root must be importable whatever directory gunicorn was started from.
_PROJECT_DIR = str(Path(__file__).resolve().parent.parent)
if _PROJECT_DIR not in sys.path:
    sys.path.insert(0, _PROJECT_DIR)
from config.env import env  # noqa: E402
from config.local import metrics_dir  # noqa: E402

bind = env.str("BIND", default="127.0.0.1:8080")
workers = env.int("GUNICORN_WORKERS", default=multiprocessing.cpu_count() * 2)
threads = env.int("GUNICORN_THREADS", default=1)
worker_class = env.str("GUNICORN_WORKER_CLASS", default="gthread" if threads > 1 else "sync")
backlog = 2048
timeout = 30
graceful_timeout = 10
keepalive = 5
accesslog = env.str("GUNICORN_ACCESSLOG", default=None)
errorlog = "-"
loglevel = env.str("LOG_LEVEL", default="info").strip().lower()
proc_name = "flash-sale-orders"

# Request limits: gunicorn answers a request past them itself, before Django. A header field may
# be 32 KB here, above the application's own bound (MAX_REQUEST_HEADER_BYTES, 8 KB), so that a
# long header gets the application's JSON 431; the request line gets gunicorn's maximum.
limit_request_line = env.int("GUNICORN_LIMIT_REQUEST_LINE", default=8190)
limit_request_field_size = env.int("GUNICORN_LIMIT_REQUEST_FIELD_SIZE", default=32 * 1024)
limit_request_fields = env.int("GUNICORN_LIMIT_REQUEST_FIELDS", default=100)


def post_worker_init(worker):
    """What gunicorn still answers itself goes out as the API's JSON error, not an HTML page."""
    from config import gunicorn_errors

    gunicorn_errors.install()


# Prometheus multiprocess mode (kernel/metrics.py): the workers inherit the directory from here.
_METRICS_DIR = str(metrics_dir())


def child_exit(server, worker):
    """A worker gone: its live gauges must stop counting (its counters stay, as they should)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, _METRICS_DIR)
