"""`make run`: everything from a fresh checkout to a served API, in one command.

Starts the project's own PostgreSQL and Redis (unless DATABASE_URL / REDIS_URL are set),
migrates, seeds the load-test data when the database is empty, creates an admin user, gives the
seeded customers the development password (and prints it), loads stock into Redis, then serves
with gunicorn on 127.0.0.1:8080 beside a settler (pays the asynchronous orders in batches), a
Celery worker and Celery beat (event relay every second, expiry of unpaid orders and stock
reconciliation every minute). Ctrl-C stops them all; `make stop` also stops the servers.

    python -m devtools.serve [run|stop]
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from config import local, web_server
from config.env import env
from devtools import devservers
from kernel.private_files import private_file_read_or_create

BASE_DIR = local.BASE_DIR
LOG_DIR = local.DATA_DIR / "logs"
PID_DIR = local.DATA_DIR / "run"
ADMIN_PASSWORD_FILE = local.DATA_DIR / "admin-password.txt"
ADMIN_USER_ID = 1_000_000  # far above the seeded customers 1..N, which reseeding recreates
PROCESSES = ("gunicorn", "settler", "worker", "beat")


def _say(message: str) -> None:
    print(f"[run] {message}", flush=True)


def _prepare() -> None:
    import django
    from django.conf import settings
    from django.core.management import call_command

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    _say("migrating the database")
    call_command("migrate", interactive=False, verbosity=0)
    _say("collecting static files (admin CSS/JS, API docs)")
    call_command("collectstatic", interactive=False, verbosity=0)
    call_command("seed_loadtest", if_empty=True)
    _ensure_admin()
    _give_customers_the_development_password()
    _say("reconciling stock between Redis and the database")
    call_command("reconcile_inventory")
    if settings.SECRET_KEY_IS_DEVELOPMENT:
        _say(
            f"SECRET_KEY is not set: using a development key made for this checkout "
            f"({local.DATA_DIR / 'secret-key.txt'}). Set SECRET_KEY for anything but local use."
        )


def _ensure_admin() -> None:
    """Create the admin user once, with a generated password kept in ADMIN_PASSWORD_FILE (private
    from its first byte). An admin that exists is left alone: a password changed in the admin
    stays changed."""
    from accounts.models import User

    url = "http://127.0.0.1:8080/admin/"
    admin = User.objects.filter(username="admin").first()
    if admin is not None:
        first = ADMIN_PASSWORD_FILE.read_text().strip() if ADMIN_PASSWORD_FILE.exists() else None
        if first is not None and admin.check_password(first):
            _say(f"admin: {url}  user 'admin'  password '{first}' (in {ADMIN_PASSWORD_FILE})")
        else:
            _say(f"admin: {url}  user 'admin'  password as changed in the admin (not {ADMIN_PASSWORD_FILE})")
        return
    password = private_file_read_or_create(ADMIN_PASSWORD_FILE, make=lambda: secrets.token_urlsafe(12))
    User.objects.create_superuser(id=ADMIN_USER_ID, username="admin", password=password)
    _say(f"admin: {url}  user 'admin'  password '{password}' (in {ADMIN_PASSWORD_FILE}), created")


def _give_customers_the_development_password() -> None:
    """The seeded customers without a password get this checkout's development password
    (accounts/development.py: hashed in the database, derived from SECRET_KEY, stored nowhere),
    printed here so that the shop can be signed in to. `manage.py check --deploy` refuses it."""
    from accounts.development import development_password, development_password_give, development_password_holders
    from loadtest.seeding import CUSTOMER_ID_LIMIT

    given = development_password_give(user_ids_below=CUSTOMER_ID_LIMIT)
    holders = development_password_holders()
    if not holders:
        _say("shop: no customer has the development password (each has one of their own)")
        return
    _say(
        f"shop: http://127.0.0.1:8080/shop/  user 'user1' (any of the {holders} seeded customers)  password "
        f"'{development_password()}'{', given now' if given else ''} (local use only: check --deploy refuses it)"
    )


class Supervisor:
    """Keeps the processes `make run` starts beside gunicorn running: one that dies (a crash, an
    OOM kill, a `kill -9`) is started again, its log and pid file in LOG_DIR and PID_DIR.

    A process that dies within YOUNG_SECONDS of its start waits twice as long as last time
    before the next start (1 s, 2 s, ... up to MAX_PAUSE_SECONDS), so a process that cannot start
    costs little and its log shows why; one that ran longer is started again after 1 s. (A
    deployment supervises these with its own process manager instead: see docs/running.md.)"""

    YOUNG_SECONDS = 10.0
    MAX_PAUSE_SECONDS = 30.0

    def __init__(self, commands: dict[str, list[str]], *, log_dir: Path = LOG_DIR, pid_dir: Path = PID_DIR) -> None:
        self.commands = commands
        self.log_dir, self.pid_dir = log_dir, pid_dir
        self.processes: dict[str, subprocess.Popen] = {}
        self.restarts: dict[str, int] = dict.fromkeys(commands, 0)
        self._started_at: dict[str, float] = {}
        self._pause: dict[str, float] = dict.fromkeys(commands, 0.5)
        self._due_at: dict[str, float] = {}

    def start(self) -> None:
        for name in self.commands:
            self._spawn(name)

    def check(self) -> list[str]:
        """Start again what has died and waited out its pause; returns the names started."""
        started = []
        now = time.monotonic()
        for name, process in self.processes.items():
            if process.poll() is None:
                continue
            if name not in self._due_at:
                young = now - self._started_at[name] < self.YOUNG_SECONDS
                pause = min(self._pause[name] * 2, self.MAX_PAUSE_SECONDS) if young else 1.0
                self._pause[name] = pause
                self._due_at[name] = now + pause
                _say(f"{name} exited with {process.returncode}; starting it again in {pause:.0f} s "
                     f"(log: {self.log_dir / f'{name}.log'})")  # fmt: skip
            if now >= self._due_at[name]:
                del self._due_at[name]
                self.restarts[name] += 1
                started.append(name)
        for name in started:
            self._spawn(name)
        return started

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for name, process in self.processes.items():
            process.wait()
            (self.pid_dir / f"{name}.pid").unlink(missing_ok=True)

    def _spawn(self, name: str) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as log:  # the child keeps its own descriptor
            process = subprocess.Popen(self.commands[name], cwd=BASE_DIR, stdout=log, stderr=subprocess.STDOUT)
        (self.pid_dir / f"{name}.pid").write_text(str(process.pid))
        self.processes[name] = process
        self._started_at[name] = time.monotonic()


def run() -> int:
    local.metrics_dir(wipe=True)  # counters start from zero with the processes that write them
    devservers.ensure_running_if_needed()
    _prepare()
    python = sys.executable
    helpers = Supervisor({
        "settler": [python, "manage.py", "settle_payments"],
        "worker": [python, "-m", "celery", "-A", "config", "worker", "--loglevel", "INFO",
                   "--concurrency", str(env.int("CELERY_CONCURRENCY", default=2))],
        "beat": [python, "-m", "celery", "-A", "config", "beat", "--loglevel", "INFO"],
    })  # fmt: skip
    helpers.start()
    logs = ", ".join(str(LOG_DIR / f"{name}.log") for name in PROCESSES[1:])
    _say(f"settler, Celery worker and beat started, and started again if they die (logs: {logs})")
    bind = env.str("BIND", default="127.0.0.1:8080")
    _say(f"serving on http://{bind}/  API docs: http://{bind}/api/docs  (Ctrl-C to stop)")
    gunicorn = subprocess.Popen(web_server.command(bind), cwd=BASE_DIR)
    (PID_DIR / "gunicorn.pid").write_text(str(gunicorn.pid))
    try:
        while gunicorn.poll() is None:  # gunicorn's own arbiter restarts its workers
            helpers.check()
            time.sleep(0.5)
        return gunicorn.returncode
    except KeyboardInterrupt:
        gunicorn.send_signal(signal.SIGTERM)
        return gunicorn.wait()
    finally:
        helpers.stop()
        (PID_DIR / "gunicorn.pid").unlink(missing_ok=True)


def stop() -> int:
    for name in PROCESSES:
        pid_file = PID_DIR / f"{name}.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
                _say(f"stopped {name}")
            except ProcessLookupError:
                pass
            pid_file.unlink(missing_ok=True)
    devservers.stop()
    return 0


if __name__ == "__main__":
    sys.exit(stop() if sys.argv[1:2] == ["stop"] else run())
