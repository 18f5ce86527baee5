"""The HTTP server in front of config.wsgi, and its command line: WEB_SERVER picks it.

- `gunicorn`: config/gunicorn.conf.py, sync workers, one request at a time each; every answer
  closes its connection, so every client request opens a new one.
- `granian` (a Rust HTTP server with a WSGI interface): worker processes, each running the
  application on one thread, so that each PostgreSQL connection still serves one request at a
  time, while the HTTP side (parsing, keep-alive, writing) runs outside Python; connections are
  kept alive. Its own answers to requests too broken to reach Django (a malformed request line,
  say) are a bare status with an empty body, not the API's JSON error: gunicorn's are rewritten
  (config/gunicorn_errors.py), granian's cannot be.

Both take BIND; every granian value below can be set from the environment as well (GRANIAN_*).
"""

from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path

from config.env import env

SERVERS = ("gunicorn", "granian")
CONFIG_DIR = Path(__file__).resolve().parent


def web_server() -> str:
    chosen = env.str("WEB_SERVER", default="gunicorn").strip().lower()
    if chosen not in SERVERS:
        raise ValueError(f"WEB_SERVER={chosen!r}: one of {', '.join(SERVERS)}")
    return chosen


def command(bind: str) -> list[str]:
    """The command line that serves config.wsgi on `bind` (host:port) with WEB_SERVER's server."""
    if web_server() == "gunicorn":
        config = str(CONFIG_DIR / "gunicorn.conf.py")
        return [sys.executable, "-m", "gunicorn", "config.wsgi", "-c", config, "--bind", bind]
    host, _, port = bind.rpartition(":")
    return [
        sys.executable, "-m", "granian", "--interface", "wsgi", "--host", host, "--port", port,
        "--http", "1", "--no-ws",
        "--workers", str(env.int("GRANIAN_WORKERS", default=multiprocessing.cpu_count() * 2)),
        # One application thread per worker: a worker's PostgreSQL connection serves one request at a time.
        "--blocking-threads", str(env.int("GRANIAN_BLOCKING_THREADS", default=1)),
        "--runtime-threads", str(env.int("GRANIAN_RUNTIME_THREADS", default=1)),
        "--backlog", str(env.int("GRANIAN_BACKLOG", default=2048)),
        "--respawn-failed-workers",
        "--workers-kill-timeout", str(env.int("GRANIAN_WORKERS_KILL_TIMEOUT", default=10)),
        "--log-level", env.str("LOG_LEVEL", default="info").strip().lower(),
        "config.wsgi:application",
    ]  # fmt: skip
