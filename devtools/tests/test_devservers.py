"""The project's own PostgreSQL and Redis (devtools/devservers.py) listen on loopback TCP, which
every local user can reach: each refuses a connection without its password, kept in a private
file, and a data directory from before the passwords is upgraded in place on the next start."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest
import redis
from django.conf import settings

from config import local
from config.env import env
from devtools import devservers
from devtools.testing import free_port

own_servers = pytest.mark.skipif(
    not local.uses_own_database() or bool(env.str("REDIS_URL", default="")),
    reason="the project's own servers only (DATABASE_URL and REDIS_URL unset)",
)


def _refused_without_password(*, pg_port: int, redis_port: int) -> None:
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(host="127.0.0.1", port=pg_port, user="postgres", password="", dbname="postgres").close()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=redis_port).ping()


@own_servers
def test_the_projects_servers_refuse_a_connection_without_their_password():
    _refused_without_password(pg_port=local.PG_PORT, redis_port=local.REDIS_PORT)

    with psycopg.connect(local.default_database_url()) as conn:  # what the project connects with
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    assert redis.Redis.from_url(local.default_redis_url()).ping()
    for path in (local.PG_PASSWORD_FILE, local.REDIS_PASSWORD_FILE):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


# --- A data directory from before the passwords ------------------------------------------------

# What initdb --auth=trust wrote, and the start before passwords used: every connection trusted.
OLD_PG_HBA = "local all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n"


def _devservers(command: str, data_dir: Path, pg_port: int, redis_port: int, *, check: bool = True) -> None:
    """`python -m devtools.devservers <command>` for the servers of `data_dir` on those ports."""
    child_env = {**os.environ, "SHOP_DATA_DIR": str(data_dir), "SHOP_PG_PORT": str(pg_port),
                 "SHOP_REDIS_PORT": str(redis_port), "DATABASE_URL": "", "REDIS_URL": ""}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "devtools.devservers", command],
        cwd=settings.BASE_DIR,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 or not check, done.stdout + done.stderr


def _start_as_before_passwords(data_dir: Path, pg_port: int, redis_port: int) -> None:
    """Both servers running as an earlier checkout left them: PostgreSQL trusting every
    connection (an initdb with --auth=trust), Redis without requirepass."""
    pgdata = data_dir / "postgres"
    if not pgdata.exists():
        pgdata.mkdir(parents=True)
        user = devservers._system_user()
        if user is not None:  # as root, PostgreSQL runs as its own user (devtools/devservers.py)
            devservers._make_traversable(data_dir)
            os.chown(pgdata, user.pw_uid, user.pw_gid)
        devservers._run_as_pg(
            [devservers._pg_bin("initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust"],
            stdout=subprocess.DEVNULL,
        )
    (pgdata / "pg_hba.conf").write_text(OLD_PG_HBA)
    devservers._run_as_pg(
        [devservers._pg_bin("pg_ctl"), "-D", str(pgdata), "-l", str(pgdata / "server.log"), "-w", "start",
         "-o", f"-c listen_addresses=127.0.0.1 -p {pg_port} -k {pgdata}"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    with psycopg.connect(host="127.0.0.1", port=pg_port, user="postgres", dbname="postgres", autocommit=True) as conn:
        conn.execute("ALTER ROLE postgres PASSWORD NULL")  # as it was: no password at all
    redis_dir = data_dir / "redis"
    redis_dir.mkdir(exist_ok=True)
    subprocess.run(
        [devservers._redis_server_binary(), "--bind", "127.0.0.1", "--port", str(redis_port), "--dir",
         str(redis_dir), "--daemonize", "yes", "--pidfile", str(redis_dir / "redis.pid"), "--save", ""],
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    devservers._wait_for_port(redis_port, "Redis")


def _passwords(data_dir: Path) -> tuple[str, str]:
    return tuple((data_dir / name).read_text().strip() for name in ("postgres-password.txt", "redis-password.txt"))


@pytest.fixture
def data_dir():
    """Not under pytest's tmp_path: another pytest session on the machine makes its parent 0700
    again, and PostgreSQL's own user (as root) could no longer reach the data."""
    path = Path(tempfile.mkdtemp(prefix="shop-data-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("running", [True, False], ids=["servers-running", "servers-stopped"])
def test_a_data_dir_from_before_the_passwords_is_upgraded_in_place_on_the_next_start(data_dir, running):
    pg_port, redis_port = free_port(), free_port()
    try:
        _start_as_before_passwords(data_dir, pg_port, redis_port)
        with psycopg.connect(host="127.0.0.1", port=pg_port, user="postgres", dbname="postgres") as conn:
            conn.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
        redis.Redis(port=redis_port).set("kept", "42")
        if not running:
            _devservers("stop", data_dir, pg_port, redis_port)
        _devservers("start", data_dir, pg_port, redis_port)

        _refused_without_password(pg_port=pg_port, redis_port=redis_port)
        pg_password, redis_password = _passwords(data_dir)
        url = f"postgres://postgres:{pg_password}@127.0.0.1:{pg_port}/postgres"
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT x FROM kept").fetchone() == (42,)
        if running:  # the same server, signed in (stopped, its keys are gone: it kept no file)
            assert redis.Redis(port=redis_port, password=redis_password).get("kept") == b"42"
        for name in ("postgres-password.txt", "redis-password.txt"):
            assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600

        _devservers("stop", data_dir, pg_port, redis_port)  # and once more, from a cold start
        _devservers("start", data_dir, pg_port, redis_port)
        _refused_without_password(pg_port=pg_port, redis_port=redis_port)
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT x FROM kept").fetchone() == (42,)
    finally:
        _devservers("stop", data_dir, pg_port, redis_port, check=False)
