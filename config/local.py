"""The project's own servers as the settings find them: the data directory, where PostgreSQL
and Redis listen, their passwords, the development secret key and the metrics directory.

Serving code reads these (settings, gunicorn.conf.py); starting and stopping the servers is dev
tooling (devtools/devservers.py), which reads them here too. Nothing here starts anything.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from urllib.parse import quote

from config.env import BASE_DIR, database_url_naming, env
from kernel.private_files import private_file_read_or_create

# A relative SHOP_DATA_DIR is under the project, whatever the current directory (PostgreSQL
# itself resolves relative paths from its data directory, which would break its socket).
DATA_DIR = (BASE_DIR / env.str("SHOP_DATA_DIR", default=".data")).resolve()
PG_PORT = env.int("SHOP_PG_PORT", default=54329)
REDIS_PORT = env.int("SHOP_REDIS_PORT", default=63799)
# The first of the six ports of the local Redis Cluster for stock (STOCK_REDIS_CLUSTER=local).
# Each node also listens on its port + 10000 (the cluster bus): both below Linux's ephemeral
# ports (32768 and up), which an outgoing connection may hold when a node starts.
REDIS_CLUSTER_PORT = env.int("SHOP_REDIS_CLUSTER_PORT", default=21300)
TEST_REDIS_CLUSTER_PORT = REDIS_CLUSTER_PORT + 6  # the tests' own six nodes
LOADTEST_REDIS_CLUSTER_PORT = REDIS_CLUSTER_PORT + 12  # a load run's own (manage.py loadtest)
PG_USER = "postgres"
PG_DATABASE = "shop"
PG_PASSWORD_FILE = DATA_DIR / "postgres-password.txt"
REDIS_PASSWORD_FILE = DATA_DIR / "redis-password.txt"


def local_password(path: Path) -> str:
    """A server's password, generated into a private file on first use."""
    return private_file_read_or_create(path, make=lambda: secrets.token_urlsafe(32))


def default_database_url() -> str:
    """The project's own PostgreSQL, with its password (made on first use)."""
    password = quote(local_password(PG_PASSWORD_FILE), safe="")
    return f"postgres://{PG_USER}:{password}@127.0.0.1:{PG_PORT}/{PG_DATABASE}"


def default_redis_url() -> str:
    """The project's own Redis, with its password (made on first use), logical database 0."""
    return f"redis://:{quote(local_password(REDIS_PASSWORD_FILE), safe='')}@127.0.0.1:{REDIS_PORT}/0"


def default_redis_cluster_urls(*, base_port: int = REDIS_CLUSTER_PORT) -> list[str]:
    """The six nodes of one of the project's own Redis Clusters (devtools/redis_cluster.py), with
    the password."""
    password = quote(local_password(REDIS_PASSWORD_FILE), safe="")
    return [f"redis://:{password}@127.0.0.1:{port}" for port in range(base_port, base_port + 6)]


def metrics_dir(*, wipe: bool = False) -> Path:
    """Where every process of this deployment keeps its Prometheus values (kernel/metrics.py):
    PROMETHEUS_MULTIPROC_DIR, else prometheus/ in the data dir (prometheus-test/ for tests).
    Put into this process's environment, so the client (which reads it at import) and every
    child process agree; created if missing. `wipe` empties it, for whatever starts the
    processes that write there (a dead process's files would add to the new ones' counts)."""
    testing = env.bool("SHOP_TESTING", default=False)
    default = DATA_DIR / ("prometheus-test" if testing else "prometheus")
    path = Path(env.str("PROMETHEUS_MULTIPROC_DIR", default=str(default))).resolve()
    if wipe:
        shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path


def uses_own_database() -> bool:
    """DATABASE_URL unset: the project's own PostgreSQL on loopback, so this is a developer's
    machine (a deployment names its database)."""
    return not env.str("DATABASE_URL", default="")


def development_secret_key() -> str:
    """A SECRET_KEY for this checkout alone, made once under the data directory (private from
    its first byte, kernel/private_files.py), one for every process of the checkout.

    Random, unlike a key written in the code, which anyone could read and sign sessions with.
    """
    return private_file_read_or_create(DATA_DIR / "secret-key.txt", make=lambda: secrets.token_urlsafe(50))


def configured_database_url() -> str:
    """DATABASE_URL, or the project's own PostgreSQL when it is unset or blank."""
    return env.str("DATABASE_URL", default="") or default_database_url()


def current_database_url() -> str:
    """DATABASE_URL as configured, naming the database this process is connected to (under
    tests, test_shop): what child processes must use to reach the very same one (load-test
    servers, test workers)."""
    from django.db import connection  # not at import: the settings import this module

    return database_url_naming(configured_database_url(), connection.settings_dict["NAME"])
