"""CPU time of process trees, read from /proc: what one order costs on each side of a run.

A tree's CPU is, over its live processes, user + system time plus the time of the children
each has reaped (cutime + cstime in /proc/<pid>/stat). A child that exits between two readings
is not lost: its time moves into its parent's reaped-children fields, and it is no longer
counted by itself, so nothing is counted twice. Missing pids (a process that exited, /proc
absent, a server on another host) give None, never an error: the report then says "unknown".
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from django.db import connection

PROC = Path("/proc")
TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class ProcStat:
    pid: int
    comm: str
    ppid: int
    ticks: int  # utime + stime + cutime + cstime


def parse_stat(line: str) -> ProcStat:
    """One /proc/<pid>/stat line. The command name sits in parentheses and may itself hold
    spaces and parentheses, so the fields are counted from the last ')'."""
    head, _, tail = line.rpartition(")")
    pid, _, comm = head.partition(" (")
    fields = tail.split()  # fields[0] is the state (field 3); utime is field 14
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return ProcStat(pid=int(pid), comm=comm, ppid=int(fields[1]), ticks=utime + stime + cutime + cstime)


def read_stat(pid: int) -> ProcStat | None:
    try:
        return parse_stat((PROC / str(pid) / "stat").read_text())
    except (OSError, ValueError, IndexError):  # gone, unreadable, or no /proc at all
        return None


def _all_processes() -> list[ProcStat]:
    with contextlib.suppress(OSError):
        found = (read_stat(int(entry.name)) for entry in PROC.iterdir() if entry.name.isdigit())
        return [stat for stat in found if stat is not None]
    return []


def process_tree(roots: Iterable[int]) -> list[ProcStat]:
    """The live roots and all their live descendants."""
    processes = _all_processes()
    children: dict[int, list[ProcStat]] = {}
    for stat in processes:
        children.setdefault(stat.ppid, []).append(stat)
    by_pid = {stat.pid: stat for stat in processes}
    tree, waiting = [], [by_pid[pid] for pid in roots if pid in by_pid]
    while waiting:
        stat = waiting.pop()
        tree.append(stat)
        waiting += children.get(stat.pid, [])
    return tree


def tree_cpu_ms(roots: Iterable[int]) -> float | None:
    """CPU milliseconds used so far by the trees under `roots`; None when no root is alive."""
    tree = process_tree(roots)
    return sum(stat.ticks for stat in tree) * 1000 / TICKS_PER_S if tree else None


def children(pid: int) -> list[int]:
    return [stat.pid for stat in _all_processes() if stat.ppid == pid]


def postgres_server_pid() -> int | None:
    """The PostgreSQL postmaster this process talks to, if it runs on this machine: the parent
    of our own backend. None for a server elsewhere (its pids mean nothing here)."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            backend = read_stat(cursor.fetchone()[0])
    except Exception:  # no database: the report goes on without PostgreSQL's share
        return None
    if backend is None or not backend.comm.startswith("postgres"):
        return None
    postmaster = read_stat(backend.ppid)
    return postmaster.pid if postmaster is not None and postmaster.comm.startswith("postgres") else None


def redis_server_pids() -> list[int]:
    """The Redis servers this process talks to that run on this machine (each one's `process_id`
    is a redis-server here): the one of REDIS_URL and, with stock on a Redis Cluster, every node
    of it, replicas too (they replay every write)."""
    import redis
    from django.conf import settings
    from django_redis import get_redis_connection

    clients = [get_redis_connection("default")]
    clients += [redis.Redis.from_url(url, socket_timeout=2) for url in settings.STOCK_REDIS_CLUSTER_NODES]
    pids = []
    for client in clients:
        try:
            pid = int(client.info("server")["process_id"])
        except Exception:  # not answering: the report goes on without its share
            continue
        server = read_stat(pid)
        if server is not None and server.comm.startswith("redis") and pid not in pids:
            pids.append(pid)
    return pids


def machine_ticks() -> list[int] | None:
    """The machine's CPU time so far by kind, in ticks (/proc/stat's first line: user, nice,
    system, idle, iowait, irq, softirq, steal, ...); None off Linux."""
    try:
        return [int(value) for value in (PROC / "stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None


def machine_busy_ms() -> float | None:
    """CPU milliseconds all of this machine's processes used so far (user, nice, system, irq,
    softirq: not idle, I/O wait nor what the host stole); None off Linux."""
    ticks = machine_ticks()
    if ticks is None or len(ticks) < 7:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = ticks[:7]
    return (user + nice + system + irq + softirq) * 1000 / TICKS_PER_S


def wait_until_idle(roots: list[int], *, timeout: float = 30.0, window: float = 0.5, idle_ms: float = 20.0) -> None:
    """Wait until the trees use at most `idle_ms` of CPU in a `window` (start-up over: workers
    booted, settlers listening), so a measurement that starts now counts work, not imports."""
    deadline = time.monotonic() + timeout
    last = tree_cpu_ms(roots)
    while time.monotonic() < deadline:
        time.sleep(window)
        now = tree_cpu_ms(roots)
        if now is None or last is None or now - last <= idle_ms:
            return
        last = now


class CpuMeter:
    """CPU used by named sides ({"request": [gunicorn master pid], ...}) between `start()` and
    each side's `stop(side)`; a side whose processes are gone by then is None (unknown)."""

    MACHINE = "machine"  # the side that is every process of the machine, not a tree

    def __init__(self, sides: dict[str, list[int]]) -> None:
        self.sides = {name: pids for name, pids in sides.items() if pids}
        self._before: dict[str, float | None] = {}
        self.used_ms: dict[str, float | None] = {}

    def _now(self, name: str) -> float | None:
        return machine_busy_ms() if name == self.MACHINE else tree_cpu_ms(self.sides[name])

    def start(self) -> None:
        self._before = {name: self._now(name) for name in [*self.sides, self.MACHINE]}

    def stop(self, *names: str) -> None:
        for name in names:
            if name not in self.sides and name != self.MACHINE:
                continue
            before, after = self._before.get(name), self._now(name)
            # A root gone (killed: chaos) took its CPU with it; what is left would be less than before.
            gone = name != self.MACHINE and not all(os.path.exists(f"/proc/{pid}") for pid in self.sides[name])
            self.used_ms[name] = after - before if before is not None and after is not None and not gone else None


@dataclass(frozen=True)
class CpuUse:
    """CPU milliseconds each side of a run used while it served `orders` orders (None: not
    measured: no such process in this run, or not on this machine)."""

    orders: int
    request_ms: float | None = None  # gunicorn master and workers
    settlement_ms: float | None = None  # the settlers
    postgres_ms: float | None = None  # the PostgreSQL server, for both sides
    periodic_ms: float | None = None  # Celery worker and beat: event relay, expiry, reconciliation
    redis_ms: float | None = None  # the Redis server, for both sides
    load_generator_ms: float | None = None  # k6 itself
    machine_ms: float | None = None  # every process of the machine, these and anything else running

    def per_order(self, ms: float | None) -> float | None:
        return ms / self.orders if ms is not None and self.orders else None

    @property
    def total_ms(self) -> float | None:
        """All sides measured together; None unless the request side and PostgreSQL were."""
        if self.request_ms is None or self.postgres_ms is None:
            return None
        others = (self.settlement_ms, self.periodic_ms, self.redis_ms)
        return self.request_ms + self.postgres_ms + sum(ms or 0.0 for ms in others)

    def as_dict(self) -> dict[str, float | int | None]:
        data: dict[str, float | int | None] = {"orders": self.orders}
        names = ("request_ms", "settlement_ms", "periodic_ms", "postgres_ms", "redis_ms", "total_ms",
                 "load_generator_ms", "machine_ms")  # fmt: skip
        for name in names:
            data[name] = getattr(self, name)
            data[f"{name}_per_order"] = self.per_order(getattr(self, name))
        return data
