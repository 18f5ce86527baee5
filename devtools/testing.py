"""Factories and helpers for tests: plain functions, real services, real servers."""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis
from django.conf import settings
from django.db import connection
from django_redis import get_redis_connection
from psycopg import pq
from rest_framework.test import APIClient

from accounts.models import User
from accounts.services import token_create, user_create
from config.local import current_database_url
from inventory.models import Product
from inventory.services import product_create

_usernames = (f"customer{i}" for i in itertools.count(1))


def free_port() -> int:
    """A TCP port nothing listens on right now, for a server a test starts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@functools.cache
def password_hash(password: str) -> str:
    """make_password(password), made once per session: the same real hash (the project's hasher,
    its full iterations) for each test's user with that password, in place of one more half a
    second of PBKDF2 per fixture. A login still checks the password against it in full."""
    from django.contrib.auth.hashers import make_password

    return make_password(password)


def make_user(*, balance: int = 1_000, username: str | None = None) -> User:
    return user_create(username=username or next(_usernames), balance=balance)


def make_staff(*, username: str, permissions: tuple[str, ...] = ()) -> User:
    """A staff user holding exactly `permissions` ("app_label.codename"), with no usable password
    (sign in with Client.force_login)."""
    from django.contrib.auth.models import Permission

    user = User.objects.create_user(username=username, is_staff=True)
    for name in permissions:
        app_label, codename = name.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return user


def make_product(*, price: int = 100, stock_quantity: int = 100, name: str = "Widget") -> Product:
    return product_create(name=name, price=price, stock_quantity=stock_quantity)


def client_for(user: User) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token_create(user=user).key}")
    return client


def order_body(user: User, *items: tuple[Product, int], coupon: str | None = None) -> dict:
    body = {
        "userId": user.id,
        "orderItems": [{"productId": p.id, "quantity": q, "price": p.price} for p, q in items],
    }
    if coupon:
        body["couponCode"] = coupon
    return body


class BalanceRowHeld:
    """A top-up of `amount` on its own thread and connection that changes the account and then
    holds its row (updated, not committed) until `release()`: whoever read the balance's version
    before it commits misses its version check once. Use as a context manager; the top-up has
    committed when the block ends."""

    def __init__(self, *, user_id: int, amount: int = 5) -> None:
        self._holding, self._released = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._top_up, args=(user_id, amount))

    def _top_up(self, user_id: int, amount: int) -> None:
        from django.db import transaction

        from accounts.models import BalanceEntry
        from accounts.services import account_change_balance

        try:
            with transaction.atomic():
                account_change_balance(user_id=user_id, amount=amount, kind=BalanceEntry.Kind.TOP_UP,
                                       reference="held top-up")  # fmt: skip
                self._holding.set()
                self._released.wait(30)
        finally:
            connection.close()

    def release(self) -> None:
        self._released.set()

    def __enter__(self) -> BalanceRowHeld:
        self._thread.start()
        assert self._holding.wait(30), "the top-up never took the row"
        return self

    def __exit__(self, *exc) -> None:
        self.release()
        self._thread.join(30)


def waiting_on_a_row_lock() -> bool:
    """Some connection to this test's database waits for a lock right now (pg_stat_activity):
    the moment to release what holds it, when a test forces a conflict behind a held row."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0


def race(count: int, action: Callable[[int], object]) -> list[object]:
    """Run `action(i)` for i in range(count) on `count` real threads released at the same moment.

    Each thread has its own database connection (Django's are per thread) and closes it.
    """
    barrier = threading.Barrier(count)

    def run(i: int):
        try:
            barrier.wait()
            return action(i)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def run_in_django_process(
    code: str, *, timeout: float = 60, redis_url: str | None = None
) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python process with Django set up on the test database and Redis (or
    the Redis at `redis_url`)."""
    env = child_environment({"REDIS_TEST_URL": redis_url} if redis_url else None)
    script = "import django, os\nos.environ.setdefault('DJANGO_SETTINGS_MODULE', 'config.settings')\ndjango.setup()\n"
    return subprocess.run(
        [sys.executable, "-c", script + textwrap.dedent(code)],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def child_environment(extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a process a test starts: this test's database and Redis, then `extra_env`."""
    env = dict(os.environ, DATABASE_URL=current_database_url(), SHOP_TESTING="1", REDIS_TEST_URL=settings.REDIS_URL)
    env.update(extra_env or {})
    return env


class Settler:
    """A real settler process (manage.py settle_payments) on the test database and Redis,
    killable for crash tests. Its log (one line per batch) is at `log_path`."""

    def __init__(self, *, extra_env: dict[str, str] | None = None, name: str = "s1", batch_size: int | None = None):
        env = child_environment({"LOG_LEVEL": "INFO", **(extra_env or {})})  # its batch lines are INFO
        log_dir = Path(settings.BASE_DIR) / "test-output"
        log_dir.mkdir(exist_ok=True)
        self.log_path = log_dir / f"settler-{name}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        command = [sys.executable, "manage.py", "settle_payments"]
        if batch_size:
            command += ["--batch-size", str(batch_size)]
        self.process = subprocess.Popen(
            command, cwd=settings.BASE_DIR, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._wait_until_ready()

    def _wait_until_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "settler: waiting" in self.log_path.read_text():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"settler did not start:\n{self.log_path.read_text()}")

    def orders_settled(self) -> int:
        """Orders this settler paid or cancelled, from its batch lines."""
        return sum(
            int(paid) + int(cancelled)
            for paid, cancelled in re.findall(r"settled batch: (\d+) paid, (\d+) cancelled", self.log_path.read_text())
        )

    def kill(self) -> None:
        """SIGKILL, no goodbye: whatever the settler was doing is cut off mid-way."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self._log.close()


def settlement_batch_in_flight() -> bool:
    """A settler's batch transaction holds its claimed rows right now (from pg_stat_activity:
    it waits inside the batch, after reading the items of the orders it claimed)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state = 'idle in transaction' AND query LIKE %s",
            ["%orders_orderitem%"],
        )
        return cursor.fetchone()[0] > 0


def start_redis_server(port: int, data_dir: Path) -> subprocess.Popen:
    """A redis-server of our own on `port`, its append-only file (fsync always) in `data_dir`:
    for tests that kill Redis and start it again from that file."""
    from devtools import devservers

    process = subprocess.Popen(
        [devservers._redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data_dir),
         "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if redis.Redis(port=port).ping():
                return process
        except redis.exceptions.RedisError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"redis-server did not answer on port {port}")


def fresh_login_window(*, at_least: float = 10) -> None:
    """The login attempts of a test all fall in one fixed window (LOGIN_RATE_LIMIT_WINDOW_SECONDS):
    if the current one ends within `at_least` seconds, wait for the next to begin."""
    window = settings.LOGIN_RATE_LIMIT_WINDOW_SECONDS
    left = window - time.time() % window
    if left < at_least:
        time.sleep(left + 0.01)


# Python's audit events for what creates, opens, renames or changes the mode of a file
_FILE_EVENTS = frozenset({"open", "os.chmod", "os.chown", "os.link", "os.rename", "os.remove", "os.symlink"})
_watched: dict[Path, set[str]] = {}


def _look_at_watched_directories(event: str, args: tuple) -> None:
    if not _watched or event not in _FILE_EVENTS:
        return
    for directory, seen in list(_watched.items()):
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(directory):  # its own audit event, not a file event
                with contextlib.suppress(FileNotFoundError):
                    mode = os.lstat(directory / name).st_mode
                    if stat.S_ISREG(mode) and stat.S_IMODE(mode) & 0o077:
                        seen.add(name)


@contextlib.contextmanager
def files_open_to_others(directory: Path) -> Iterator[set[str]]:
    """The names of the regular files in `directory` that anyone but their owner could read or write at
    some moment of the block: looked at before every file operation this process makes (an
    audit hook: the moment between a write and a chmod included) and at the end. The usual
    umask (022) meanwhile, as on a shared host. Not thread-safe as to the umask."""
    if not getattr(files_open_to_others, "hooked", False):
        sys.addaudithook(_look_at_watched_directories)  # for the process's lifetime; idle unless watching
        files_open_to_others.hooked = True
    seen: set[str] = set()
    umask = os.umask(0o022)
    _watched[directory] = seen
    try:
        yield seen
        _look_at_watched_directories("open", ())
    finally:
        del _watched[directory]
        os.umask(umask)


def postgres_crashed_mid_batch() -> None:
    """Once a settler holds a batch open: PostgreSQL stopped in immediate mode (a crash, the open
    batch simply gone), then started again. Only the project's own server."""
    from devtools import devservers

    wait_for(settlement_batch_in_flight, what="a batch in flight")
    connection.close()
    devservers.stop_postgres(mode="immediate")
    devservers.start_postgres()


def wait_for(condition: Callable[[], object], *, timeout: float = 30, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class CountedSince:
    """The report's server counters (kernel.metrics.REPORT_COUNTERS) added since this was made,
    over every process of the test session: `counted["lock_timeouts"]`."""

    def __init__(self) -> None:
        from kernel import metrics

        self._read = metrics.read_all
        self._before = metrics.read_all()

    def __getitem__(self, name: str) -> int:
        return self._read()[name] - self._before[name]


class WireCount:
    """What a block sent, counted on the wire (wire_count)."""

    postgres_round_trips: int = 0  # Sync (extended protocol) and Query (simple) messages
    redis_commands: list[str]  # command names, in the order sent


@contextlib.contextmanager
def wire_count() -> Iterator[WireCount]:
    """Count what this thread's database connection and every Redis client send inside the
    block: PostgreSQL's side from libpq's own trace of the connection (the order path's plain
    statements bypass Django's query hooks), Redis' side from MONITOR (not a script's commands)."""
    connection.ensure_connection()
    pgconn = connection.connection.pgconn
    counted = WireCount()
    client = get_redis_connection("default")
    watcher = redis.Redis.from_url(settings.REDIS_URL)  # its own connection: the order's stays warm
    with watcher.monitor() as monitor, tempfile.TemporaryFile("w+") as trace:
        pgconn.trace(trace.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            yield counted
        finally:
            pgconn.untrace()
        trace.seek(0)
        sent = [line.split("\t") for line in trace.read().splitlines()]
        marker = f"end-of-count-{uuid.uuid4()}"
        client.echo(marker)
        counted.redis_commands = []
        while (seen := monitor.next_command())["command"] != f"ECHO {marker}":
            if seen["client_type"] != "lua":
                counted.redis_commands.append(seen["command"].split()[0].upper())
    watcher.close()
    counted.postgres_round_trips = sum(1 for fields in sent if fields[0] == "F" and fields[2] in {"Sync", "Query"})


class ReplyCutter:
    """A real TCP hop in front of a Redis server that passes everything both ways, except once:
    the first request holding `marker` (a script's SHA, say) reaches Redis, which runs it, and
    the client's connection is closed instead of getting the reply. The reply lost in flight,
    as when Redis is killed or the network cut just after a command ran. `cut` is set then."""

    def __init__(self, *, target_port: int, marker: bytes) -> None:
        self.target_port, self.marker = target_port, marker
        self.cut = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            dropping = threading.Event()  # this connection's next reply is the one to lose
            threading.Thread(target=self._requests, args=(client, upstream, dropping), daemon=True).start()
            threading.Thread(target=self._replies, args=(upstream, client, dropping), daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket, dropping: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if not self.cut.is_set() and self.marker in data:
                    dropping.set()
                upstream.sendall(data)
        upstream.close()

    def _replies(self, upstream: socket.socket, client: socket.socket, dropping: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                if dropping.is_set() and not data.startswith(b"-NOSCRIPT"):  # NOSCRIPT: it did not run
                    self.cut.set()
                    client.shutdown(socket.SHUT_RDWR)  # the client reads the end of the connection
                    break
                dropping.clear()
                client.sendall(data)
        client.close()
        upstream.close()

    def close(self) -> None:
        self._listener.close()
