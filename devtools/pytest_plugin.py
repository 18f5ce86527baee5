"""Loaded by pytest before Django (see pyproject's addopts): test settings, real servers.

Tests run against real PostgreSQL and Redis. With DATABASE_URL / REDIS_URL unset, the
project's own servers are started here (they stay up for the next run; `make stop` stops them).
The tests use their own database (test_shop) and Redis logical database (15).
"""

import os

os.environ["SHOP_TESTING"] = "1"

from config import local
from devtools import devservers

devservers.ensure_running_if_needed()
local.metrics_dir(wipe=True)  # this session's Prometheus values only (kernel/metrics.py)


def pytest_sessionstart(session):
    """After a transactional test, the database emptied as Django's flush leaves it, faster
    (devtools/db_reset.py); SHOP_TEST_DJANGO_FLUSH=1 keeps Django's own flush, to compare."""
    from devtools import db_reset

    if not os.environ.get("SHOP_TEST_DJANGO_FLUSH"):
        db_reset.install()
