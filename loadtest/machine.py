"""The machine and software a load run ran on, for the report: what makes two reports comparable."""

from __future__ import annotations

import os
import platform
import runpy
import subprocess
from collections.abc import Callable
from pathlib import Path

import django
from django.conf import settings
from django.db import connection

from config import web_server
from inventory import redis_counts
from loadtest import cpu


def _quietly(read: Callable[[], str]) -> str:
    try:
        return read()
    except Exception as exc:  # the report is still worth writing without one version
        return f"unknown ({type(exc).__name__})"


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _postgres_version() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        return cursor.fetchone()[0]


def _k6_version(k6: str) -> str:
    return subprocess.run([k6, "version"], capture_output=True, text=True, check=True).stdout.strip()


def web_server_config() -> str:
    """The web server (config/web_server.py's WEB_SERVER) with its workers and threads, as its
    configuration computes them from this environment."""
    if web_server.web_server() == "granian":
        import granian

        line = web_server.command("127.0.0.1:0")
        workers, threads = line[line.index("--workers") + 1], line[line.index("--blocking-threads") + 1]
        return f"granian {granian.__version__}, {workers} WSGI workers x {threads} application thread(s), keep-alive"
    import gunicorn

    conf = runpy.run_path(str(Path(settings.BASE_DIR) / "config" / "gunicorn.conf.py"))
    workers = f"{conf['workers']} {conf['worker_class']} workers x {conf['threads']} thread(s)"
    return f"gunicorn {gunicorn.__version__}, {workers}"


def cpu_times() -> tuple[int, int] | None:
    """(all CPU time, time stolen by the hypervisor) so far, in ticks; None off Linux."""
    fields = cpu.machine_ticks()
    if fields is None:
        return None
    return sum(fields[:8]), fields[7] if len(fields) > 7 else 0


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> str:
    """The share of the CPU time a virtual machine's host took for others between two readings:
    on a shared box, the noise behind two runs of the same code disagreeing."""
    if before is None or after is None or after[0] <= before[0]:
        return "unknown"
    return f"{100 * (after[1] - before[1]) / (after[0] - before[0]):.1f}% of CPU time"


def machine_info(
    *, k6: str | None, server: str, steal: str = "unknown", steal_during: str = "the run (server start to last answer)"
) -> dict[str, str]:
    """What a report says about the box; `k6` None: no k6 in this measurement."""
    info = {
        "cores": str(os.cpu_count()),
        "cpu": _quietly(_cpu_model),
        "os": platform.platform(),
        "python": platform.python_version(),
        "django": django.get_version(),
        "postgresql": _quietly(_postgres_version),
        "redis": _quietly(lambda: redis_counts.redis_client().info("server")["redis_version"]),
    }
    if k6 is not None:
        info["k6"] = _quietly(lambda: _k6_version(k6))
    info["server"] = server
    info[f"cpu stolen by the host during {steal_during}"] = steal
    return info
