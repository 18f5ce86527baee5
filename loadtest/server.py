"""A gunicorn server for one load run: started with the runner's database and Redis, stopped always.

The server gets the very PostgreSQL database and Redis database this process uses (so the
invariants read what the server wrote): a load run's own (`shop_loadtest` and db 14 by default,
config/settings.py's LOADTEST), under tests test_shop and db 15. DEBUG is off, and the order
strategy to measure. It runs in its own session: a Ctrl-C in the terminal reaches k6 (which
stops and still writes its summary), and the runner then stops gunicorn itself.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from config.local import current_database_url
from config.web_server import command as web_server_command

STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0  # gunicorn's graceful_timeout is 10 s


class ServerFailed(RuntimeError):
    pass


def server_environment(*, strategy: str, port: int | None = None) -> dict[str, str]:
    """The environment of every process a run starts (gunicorn, settlers, Celery): this process's
    database and Redis, DEBUG off, the strategy; `port`, for gunicorn, its bind address.

    DATABASE_URL and REDIS_URL name what this process is connected to (under tests test_shop
    and db 15, in a load run of its own the load-test database and db 14), and the flags that
    chose them are left out: read again, SHOP_LOADTEST would add its suffix a second time."""
    env = {key: value for key, value in os.environ.items() if key not in ("SHOP_TESTING", "SHOP_LOADTEST")}
    env.update(
        DEBUG="false",
        ORDER_STRATEGY=strategy,
        DATABASE_URL=current_database_url(),
        REDIS_URL=settings.REDIS_URL,
        # A DATABASE_URL without SECRET_KEY does not start (config/settings.py): this process's key.
        SECRET_KEY=settings.SECRET_KEY,
    )
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir())
    if port is not None:
        env["BIND"] = f"127.0.0.1:{port}"
    return env


def metrics_dir() -> Path:
    """The run's own Prometheus directory (kernel/metrics.py), beside the one `make run` uses,
    so a load run never wipes nor adds to a running deployment's counts."""
    default = Path(settings.PROMETHEUS_MULTIPROC_DIR)
    return default.with_name(f"{default.name}-loadtest")


def wait_until_healthy(
    base_url: str, process: subprocess.Popen | None = None, timeout: float = STARTUP_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServerFailed(f"gunicorn exited with code {process.returncode} before answering /healthz")
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(f"{base_url}/healthz", timeout=1) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.2)
    raise ServerFailed(f"{base_url}/healthz did not answer 200 within {timeout:.0f} s")


def stop(process: subprocess.Popen, *, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM (graceful), then SIGKILL to its process group (started in its own session) if it hangs."""
    if process.poll() is not None:
        return
    process.terminate()
    wait_or_kill(process, timeout=timeout)


def stop_all(processes: list[subprocess.Popen], *, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM to all at once, so they stop side by side, then each as stop() does. One SIGTERM
    each: a second one can land while Python is finishing, when its handlers are gone, and kill
    a process that had stopped cleanly."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        wait_or_kill(process, timeout=timeout)


def wait_or_kill(process: subprocess.Popen, *, timeout: float) -> None:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # its own session: gunicorn and its workers, say
        process.wait()


@dataclass(frozen=True)
class Served:
    base_url: str
    pid: int | None = None  # gunicorn's master, when this run started it
    others: tuple[Served, ...] = ()  # the other hosts, when several serve (loadtest/hosts.py)
    settlers: tuple[subprocess.Popen, ...] = ()  # started in the hosts beside their gunicorn (loadtest/hosts.py)
    fleet: tuple = ()  # the hosts themselves (loadtest/hosts.Host), when several serve: chaos' host-kill restarts one

    @property
    def every_host(self) -> tuple[Served, ...]:
        return (self, *self.others)


@contextlib.contextmanager
def web_server(*, strategy: str, port: int, log_path: Path) -> Iterator[Served]:
    """Start the web server WEB_SERVER names (config/web_server.py: gunicorn unless it says granian),
    wait for /healthz, yield its URL and pid; stop it on the way out, whatever happens."""
    base_url = f"http://127.0.0.1:{port}"
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:  # else /healthz might answer from someone else
            raise ServerFailed(f"port {port} is already in use; pick another with --port")
    shutil.rmtree(metrics_dir(), ignore_errors=True)  # this run's counts only (settlers start after)
    metrics_dir().mkdir(parents=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            web_server_command(f"127.0.0.1:{port}"),
            cwd=settings.BASE_DIR,
            env=server_environment(strategy=strategy, port=port),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until_healthy(base_url, process)
            yield Served(base_url, process.pid)
        finally:
            stop(process)
