"""The chaos scenario's faults: a schedule the user writes, injected into the servers the run
started itself while k6 loads them, and what the answers did around each fault.

A schedule is a comma-separated list of `<fault>@<seconds>s[+<seconds>s]`, times since k6
started, the second part how long the fault lasts (pg-stop only):

    redis-kill@20s,pg-stop@40s+10s,web-worker-kill@60s,settler-kill@70s,celery-kill@80s

- redis-kill: SIGKILL to our Redis, restarted at once from its append-only file (devservers);
- pg-stop: PostgreSQL stopped in immediate mode (a crash), started again after the hold;
- web-worker-kill: SIGKILL to one gunicorn worker (its master starts another);
- settler-kill / celery-kill: SIGKILL to a settler / the Celery worker, restarted after a
  second by the supervisor below, as `make run`'s supervisor (devtools/serve.py) does;
- host-kill (with --hosts 2 or more): the last host dies whole, SIGKILL to every process in its
  network namespace (its gunicorn and settlers), and is started again at once, as a machine
  rebooting (loadtest/hosts.py, Host.kill and Host.start_again).

Only the run's own processes and the project's own PostgreSQL and Redis are ever touched;
against --url the runner refuses (loadtest/runner.py, RunOptions.problems).
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from django.db import connection
from django.db.models import Count

from config import local
from config.env import env
from devtools import devservers
from inventory.reconciliation import inventory_reconcile
from loadtest import cpu
from loadtest.invariants import Check, _check
from payments.models import Payment

KINDS = ("redis-kill", "pg-stop", "web-worker-kill", "settler-kill", "celery-kill", "host-kill")
HOST_KILL = "host-kill"  # needs another host serving meanwhile: --hosts 2 or more
DEFAULT_PG_STOP_S = 10.0
# Above DB_STATEMENT_TIMEOUT_MS (10 s): a reservation this old has no order still committing it.
ABANDONED_GRACE_S = 12.0
RESTART_AFTER_S = 1.0  # a killed settler or Celery worker, as `make run`'s supervisor
# Spread over the load profile's 240 s (at --duration-scale 1); the times scale, the hold not.
DEFAULT_SCHEDULE = "redis-kill@40s,pg-stop@80s+10s,web-worker-kill@130s,settler-kill@160s,celery-kill@190s"
# With --hosts 2 or more, a whole host too, in the hold between the worker and the settler.
DEFAULT_HOST_KILL = "host-kill@145s"
# One fault of a schedule: <kind>@<seconds>s, a pg-stop optionally +<seconds>s.
_FAULT = re.compile(r"^\s*(?P<kind>[a-z-]+)@(?P<at>\d+(?:\.\d+)?)s(?:\+(?P<hold>\d+(?:\.\d+)?)s)?\s*$")

Echo = Callable[[str], None]


class ScheduleError(ValueError):
    pass


@dataclass(frozen=True)
class Fault:
    kind: str
    at_s: float
    hold_s: float = 0.0

    @property
    def name(self) -> str:
        hold = f"+{self.hold_s:g}s" if self.hold_s else ""
        return f"{self.kind}@{self.at_s:g}s{hold}"


def parse_schedule(text: str) -> list[Fault]:
    """`redis-kill@20s,pg-stop@40s+10s` -> the faults in time order; ScheduleError says what is wrong."""
    faults = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = _FAULT.match(part)
        if not match:
            raise ScheduleError(f"{part!r}: write <fault>@<seconds>s or pg-stop@<seconds>s+<seconds>s")
        kind = match["kind"]
        if kind not in KINDS:
            raise ScheduleError(f"{part!r}: unknown fault {kind!r}; one of {', '.join(KINDS)}")
        if match["hold"] and kind != "pg-stop":
            raise ScheduleError(f"{part!r}: only pg-stop lasts (+<seconds>s); the others are kills")
        hold = float(match["hold"]) if match["hold"] else (DEFAULT_PG_STOP_S if kind == "pg-stop" else 0.0)
        faults.append(Fault(kind, float(match["at"]), hold))
    if not faults:
        raise ScheduleError("no fault in the schedule")
    return sorted(faults, key=lambda f: f.at_s)


def default_schedule(duration_scale: float, *, hosts: int = 1) -> list[Fault]:
    """The default faults, their times scaled to the run's length (a pg-stop still lasts 10 s);
    with `hosts` 2 or more, a host-kill too."""
    text = DEFAULT_SCHEDULE + (f",{DEFAULT_HOST_KILL}" if hosts >= 2 else "")
    return [Fault(f.kind, round(f.at_s * duration_scale, 1), f.hold_s) for f in parse_schedule(text)]


def host_kill_refusal(faults: list[Fault], *, hosts: int) -> str | None:
    """Why the schedule's host-kill cannot be injected, or None: it needs a host to kill while
    another one serves, so --hosts 2 or more."""
    if hosts >= 2 or not any(f.kind == HOST_KILL for f in faults):
        return None
    had = f"--hosts {hosts}" if hosts else "one host (no --hosts)"
    return (f"--faults: {HOST_KILL} kills a whole host while another one serves: it needs --hosts 2 (or more); "
            f"this run has {had}")  # fmt: skip


def refusal(*, url: str | None) -> str | None:
    """Why faults cannot be injected here, or None: only into servers this run started itself."""
    if url:
        return (f"--scenario chaos injects faults only into servers the run starts itself; {url} is someone "
                "else's (nothing was changed)")  # fmt: skip
    if not local.uses_own_database() or env.str("REDIS_URL", default=""):
        return ("--scenario chaos stops PostgreSQL and kills Redis: only the project's own servers "
                "(DATABASE_URL and REDIS_URL unset); nothing was changed")  # fmt: skip
    return None


@dataclass
class Injected:
    """A fault as it happened: unix milliseconds of its start and of its end (the server back)."""

    fault: Fault
    started_ms: int
    ended_ms: int
    detail: str


@dataclass
class Targets:
    """The run's own processes: gunicorn's master, the settlers and the periodic jobs (the
    lists async_run keeps and stops at the end; a restarted process takes its place there),
    with what restarts them. With --hosts: what kills the last host whole and starts it again
    (its settlers' places in `settlers` taken by the new ones), and the address and network
    PostgreSQL and Redis listen on besides loopback, which a restart of theirs must keep."""

    gunicorn_pid: int
    settlers: list[subprocess.Popen]
    periodic: list[subprocess.Popen]  # [celery worker, celery beat]
    restart: Callable[[subprocess.Popen, str], subprocess.Popen]  # (dead process, log name) -> new
    kill_host: Callable[[], str] | None = None  # -> what was done; None: one host, no namespaces
    also_on: tuple[str, str] | None = None  # (gateway address, network), devservers.also_listening_on
    # Held while a host is killed and started again: the supervisor leaves its settlers alone meanwhile.
    lock: threading.Lock = field(default_factory=threading.Lock)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _sigkill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _redis_kill(also_on: tuple[str, str] | None) -> str:
    pid = int((devservers.DATA_DIR / "redis" / "redis.pid").read_text().split()[0])
    _sigkill(pid)
    deadline = time.monotonic() + 10
    while devservers._port_open(devservers.REDIS_PORT) and time.monotonic() < deadline:
        time.sleep(0.05)
    devservers.start_redis(also_on=also_on[0] if also_on else None)  # replays the append-only file first
    return f"SIGKILL to redis-server pid {pid}, restarted from its append-only file"


def _pg_stop(hold_s: float, also_on: tuple[str, str] | None) -> str:
    connection.close()
    devservers.stop_postgres(mode="immediate")
    time.sleep(hold_s)
    devservers.start_postgres(also_on=also_on)
    return f"stopped in immediate mode, started after {hold_s:g} s"


class Supervisor:
    """Restarts a settler or the Celery worker that died, a second later, until stopped."""

    def __init__(self, targets: Targets) -> None:
        self.targets = targets
        self.restarts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _watched(self) -> list[tuple[list[subprocess.Popen], int, str]]:
        settlers = [(self.targets.settlers, i, f"settler-{i + 1}") for i in range(len(self.targets.settlers))]
        return [*settlers, (self.targets.periodic, 0, "celery-worker")] if self.targets.periodic else settlers

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for processes, index, name in self._watched():
                if processes[index].poll() is None:
                    continue
                if self._stop.wait(RESTART_AFTER_S):
                    return
                with self.targets.lock:  # a host killed whole is started again by the injector
                    if processes[index].poll() is not None:
                        processes[index] = self.targets.restart(processes[index], name)
                        self.restarts[name] += 1

    def __enter__(self) -> Supervisor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class Injector:
    """Injects each fault at its time since entering (k6's start), in a thread; on the way out
    the fault in hand finishes (PostgreSQL is started again) and the rest are skipped."""

    def __init__(self, faults: list[Fault], targets: Targets, echo: Echo) -> None:
        self.faults, self.targets, self.echo = faults, targets, echo
        self.injected: list[Injected] = []
        self.not_injected: list[str] = []  # each with why: k6 had ended, or the fault failed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _inject(self, fault: Fault) -> str:
        if fault.kind == "redis-kill":
            return _redis_kill(self.targets.also_on)
        if fault.kind == "pg-stop":
            return _pg_stop(fault.hold_s, self.targets.also_on)
        if fault.kind == HOST_KILL:
            if self.targets.kill_host is None:
                raise ProcessLookupError("no host to kill: the run has one host, not --hosts 2")
            with self.targets.lock:
                return self.targets.kill_host()
        if fault.kind == "web-worker-kill":
            workers = cpu.children(self.targets.gunicorn_pid)
            if not workers:
                raise ProcessLookupError(f"gunicorn {self.targets.gunicorn_pid} has no worker to kill")
            _sigkill(workers[0])
            return f"SIGKILL to gunicorn worker pid {workers[0]}"
        victim = self.targets.settlers[0] if fault.kind == "settler-kill" else self.targets.periodic[0]
        _sigkill(victim.pid)
        return f"SIGKILL to pid {victim.pid}, restarted after {RESTART_AFTER_S:g} s"

    def _run(self) -> None:
        try:
            started = time.monotonic()
            for index, fault in enumerate(self.faults):
                if self._stop.wait(max(0.0, started + fault.at_s - time.monotonic())):
                    self.not_injected += [f"{f.name} (k6 had ended)" for f in self.faults[index:]]
                    return
                self.echo(f"chaos: {fault.name}")
                began = _now_ms()
                try:
                    detail = self._inject(fault)
                except Exception as exc:  # said in the report and failing its check; the next faults go on
                    self.not_injected.append(f"{fault.name} (failed: {type(exc).__name__}: {exc})")
                    self.echo(f"chaos: {fault.name} FAILED: {exc}")
                    continue
                self.injected.append(Injected(fault, began, _now_ms(), detail))
                self.echo(f"chaos: {fault.name}: {detail}")
        finally:
            connection.close()

    def __enter__(self) -> Injector:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# --- what the answers did ----------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    at_ms: int  # when k6 recorded it (the answer's end)
    status: int  # 0: no answer (timeout, connection refused or reset)


def failed(status: int) -> bool:
    """The service failed to answer: no answer, or a 5xx. 503 with Retry-After is the service's
    own refusal, but still an error a client retries: it counts here, and is named."""
    return status == 0 or status >= 500


def read_answers(path: Path) -> list[Answer]:
    """Every order request's answer from k6's per-sample CSV (the http_reqs rows), in time order."""
    answers = []
    with gzip.open(path, "rt", newline="") as handle:
        reader = csv.reader(handle)
        column = {name: index for index, name in enumerate(next(reader, []))}
        name_at, time_at, status_at = column["metric_name"], column["timestamp"], column["status"]
        for row in reader:
            if row[name_at] == "http_reqs":
                answers.append(Answer(int(row[time_at]), int(row[status_at] or 0)))
    return sorted(answers, key=lambda a: a.at_ms)


@dataclass
class FaultWindow:
    name: str
    detail: str
    started_s: float  # seconds since k6's first second, as the chart's axis
    ended_s: float
    errors_from_s: float | None  # first and last failed answer after it (None: none)
    errors_to_s: float | None
    recovered_after_s: float | None  # first success after its last error, from its start (None: never)
    answers: dict[str, int] = field(default_factory=dict)  # by status, from its start until recovered
    during: dict[str, int] = field(default_factory=dict)  # by status, while it lasted (pg-stop's hold)


def windows(injected: list[Injected], answers: list[Answer], *, origin_ms: int) -> list[FaultWindow]:
    """Per fault: the window of failed answers (until the next fault), the first success after
    its last one, what was answered from the fault until then and while the fault lasted."""
    found = []
    for index, one in enumerate(injected):
        until = injected[index + 1].started_ms if index + 1 < len(injected) else None
        after = [a for a in answers if a.at_ms >= one.started_ms and (until is None or a.at_ms < until)]
        errors = [a for a in after if failed(a.status)]
        calm_from = errors[-1].at_ms if errors else one.ended_ms
        # The first success may come after the next fault began (a fault lasting past it).
        recovered = next((a for a in answers if a.at_ms > calm_from and 200 <= a.status < 300), None)
        end = recovered.at_ms if recovered else (answers[-1].at_ms if answers else one.started_ms)
        meanwhile = [a for a in answers if one.started_ms <= a.at_ms <= end]

        def seconds(ms: int) -> float:
            return round((ms - origin_ms) / 1000, 2)

        found.append(
            FaultWindow(
                name=one.fault.name,
                detail=one.detail,
                started_s=seconds(one.started_ms),
                ended_s=seconds(one.ended_ms),
                errors_from_s=seconds(errors[0].at_ms) if errors else None,
                errors_to_s=seconds(errors[-1].at_ms) if errors else None,
                recovered_after_s=round((recovered.at_ms - one.started_ms) / 1000, 2) if recovered else None,
                answers=_by_status(meanwhile),
                during=_by_status(a for a in after if a.at_ms <= one.ended_ms),
            )
        )
    return found


def _by_status(answers) -> dict[str, int]:
    return dict(sorted(Counter(str(a.status) for a in answers).items()))


@dataclass
class ChaosReport:
    schedule: str
    orders: str  # sync, async or both
    windows: list[FaultWindow]
    not_injected: list[str]  # each with why
    restarts: dict[str, int]
    final_answers: dict[str, int]  # each order's last answer to the careful clients
    given_back: int = 0  # abandoned reservations reconciliation gave back after the run


CUT_OFF = "cut off"  # an order a careful client began and k6 interrupted at its end: no last answer


def final_answers(path: Path) -> dict[str, int]:
    """The careful clients' last answer per order (k6's chaos_final counter, tagged answer=),
    and as CUT_OFF the orders begun (chaos_begun) that never got to one: k6 interrupted them
    at its end (gracefulRampDown), still retrying."""
    counts: Counter[str] = Counter()
    begun = 0
    with gzip.open(path, "rt", newline="") as handle:
        reader = csv.reader(handle)
        column = {name: index for index, name in enumerate(next(reader, []))}
        for row in reader:
            if row[column["metric_name"]] == "chaos_final":
                tags = dict(p.split("=", 1) for p in row[column["extra_tags"]].split("&") if "=" in p)
                counts[tags.get("answer", "?")] += int(float(row[column["metric_value"]]))
            elif row[column["metric_name"]] == "chaos_begun":
                begun += int(float(row[column["metric_value"]]))
    if begun > sum(counts.values()):
        counts[CUT_OFF] = begun - sum(counts.values())
    return dict(sorted(counts.items()))


# --- the books, beyond loadtest/invariants.py ------------------------------------------------


def give_back_abandoned(*, echo: Echo) -> int:
    """A reservation whose order failed while PostgreSQL or Redis was down could not be given
    back then ("reconciliation will"): reconciliation gives it back once it is older than the
    grace (no order can still be committing it: the statement timeout bounds that). Waits for
    the grace, as the periodic reconciliation would, then reconciles; returns how many."""
    grace = ABANDONED_GRACE_S
    echo(f"chaos: waiting {grace:g} s, then reconciliation gives back reservations abandoned during the faults")
    time.sleep(grace)
    released = len(inventory_reconcile(grace_seconds=grace).released_tokens)
    echo(f"  {released} abandoned reservations given back")
    return released


def charged_once() -> Check:
    """No order holds two payments: a retried order was charged once."""
    twice = list(
        Payment.objects.order_by()
        .values("order_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .values_list("order_id", "n")
    )
    problems = [f"order {order_id}: {n} payments" for order_id, n in twice]
    return _check("nothing charged twice", problems, None, "orders charged more than once", "one payment per order")


def clients_told(answers: dict[str, int]) -> Check:
    """Every order the careful clients sent ended with an answer: a client that gave up (no
    answer after every try) or that k6 cut off at its end, still retrying, cannot know whether
    its order exists, so the books cannot be checked against what it was told."""
    problems = [f"{answers['0']} orders got no answer after every try"] if answers.get("0") else []
    if answers.get(CUT_OFF):
        problems.append(f"{answers[CUT_OFF]} orders cut off by k6's end while their clients still retried")
    told = ", ".join(f"{answer} {n}" for answer, n in answers.items()) or "none"
    return _check("every client got an answer", problems, None, "", f"last answers: {told}")


def answered_only_202_or_503_while_pg_stopped(found: list[FaultWindow]) -> Check:
    """Issue 21: with PostgreSQL stopped, the asynchronous intake answers 202, or 503 with
    Retry-After once the backlog bound is reached; nothing else."""
    problems = [
        f"{w.name}: {status} x{n}" for w in found if w.name.startswith("pg-stop") for status, n in w.during.items()
        if status not in ("202", "503")
    ]  # fmt: skip
    return _check("only 202 or 503 while PostgreSQL was stopped", problems, None, "other answers", "202 or 503 only")


def checks(report: ChaosReport) -> list[Check]:
    """The chaos scenario's own checks, beside the invariants: every fault injected, nobody left
    without an answer, nothing charged twice and, for 202s, issue 21's rule during a pg-stop."""
    injected = _check("every fault injected", report.not_injected, None, "faults not injected",
                      f"{len(report.windows)} faults injected")  # fmt: skip
    found = [injected, clients_told(report.final_answers), charged_once()]
    if report.orders == "async":
        found.append(answered_only_202_or_503_while_pg_stopped(report.windows))
    return found
