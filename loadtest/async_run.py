"""The asynchronous scenario's extra parts: settler processes beside gunicorn, the backlog
(orders undrained or PENDING_PAYMENT) sampled every second, waiting for it to drain, time from 202 to PAID,
what the settlers' logs say about their batches, and the scenario's checks.

Time to PAID is read from the order events (outbox rows, stamped when written): from
`order.created` to `order.paid` of each order.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, connection
from django.db.models import Count, Q
from redis.exceptions import RedisError

from loadtest import server
from loadtest.invariants import Check, _check
from loadtest.results import percentile
from orders import events, intake
from orders.models import Order, OrderEvent, OrderStatus

SETTLE_TIMEOUT_S = 600.0
SETTLE_POLL_S = 0.1  # the drain time's resolution
SETTLER_STOP_TIMEOUT_S = 30.0  # a settler finishes the batch in hand on SIGTERM
PAID_WITHIN_MS = 1000.0


@dataclass
class BacklogSample:
    second: int
    backlog: int  # orders PENDING_PAYMENT


# settle_payments logs one line per batch: "settled batch: N paid, M cancelled, K retried in X ms"
_BATCH_LINE = re.compile(
    r"settled batch: (?P<paid>\d+) paid, (?P<cancelled>\d+) cancelled, (?P<retried>\d+) retried in (?P<ms>[\d.]+) ms"
)


@dataclass
class BatchStats:
    """The settlers' batches, added up from their log lines."""

    batches: int = 0
    paid: int = 0
    cancelled: int = 0
    retried: int = 0
    largest: int = 0
    busy_ms: float = 0.0  # time spent inside batches, by the settlers' own clocks

    @property
    def settled(self) -> int:
        return self.paid + self.cancelled

    @property
    def mean_batch(self) -> float:
        return self.settled / self.batches if self.batches else 0.0

    def add(self, line: str) -> bool:
        match = _BATCH_LINE.search(line)
        if not match:
            return False
        paid, cancelled = int(match["paid"]), int(match["cancelled"])
        self.batches += 1
        self.paid += paid
        self.cancelled += cancelled
        self.retried += int(match["retried"])
        self.largest = max(self.largest, paid + cancelled)
        self.busy_ms += float(match["ms"])
        return True


@dataclass
class PaymentFigures:
    orders: int
    paid: int
    cancelled: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    paid_within_1s: float  # share of the accepted orders PAID within 1 s of their 202
    max_backlog: int
    drained_after_s: float | None  # after k6 stopped; None: not drained within the timeout
    batches: BatchStats = field(default_factory=BatchStats)
    backlog: list[BacklogSample] = field(default_factory=list, repr=False)


def settler_command(*, batch_size: int | None = None, until_empty: bool = False) -> list[str]:
    command = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "settle_payments"]
    if batch_size is not None:
        command += ["--batch-size", str(batch_size)]
    return command + (["--until-empty"] if until_empty else [])


def _start(command: list[str], *, env: dict[str, str], log) -> subprocess.Popen:
    """In its own session: a Ctrl-C in the terminal reaches k6, not it."""
    return subprocess.Popen(
        command, cwd=settings.BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def start_settler(*, env: dict[str, str], log, batch_size: int | None = None, until_empty: bool = False):
    """One `manage.py settle_payments`."""
    return _start(settler_command(batch_size=batch_size, until_empty=until_empty), env=env, log=log)


@contextlib.contextmanager
def _running(commands: dict[str, list[str]], *, env: dict[str, str], log_dir: Path) -> Iterator[list[subprocess.Popen]]:
    """Each command running, logging to <its name>.log in `log_dir`; on the way out SIGTERM to
    all (a settler finishes its batch first), SIGKILL after 30 s."""
    with contextlib.ExitStack() as stack:
        processes = [
            _start(command, env=env, log=stack.enter_context((log_dir / f"{name}.log").open("ab")))
            for name, command in commands.items()
        ]
        try:
            yield processes
        finally:
            server.stop_all(processes, timeout=SETTLER_STOP_TIMEOUT_S)


def settlers(*, count: int, env: dict[str, str], log_dir: Path):
    """`count` settlers on the same database as the server under test, logging to settler-<n>.log."""
    return _running({f"settler-{n}": settler_command() for n in range(1, count + 1)}, env=env, log_dir=log_dir)


def periodic_jobs(*, env: dict[str, str], log_dir: Path):
    """What `make run` runs beside gunicorn for the periodic jobs: a Celery worker and Celery
    beat (event relay every second; expiry of unpaid orders and reconciliation every minute;
    the idempotency-key purge every hour), logging to celery-worker.log and celery-beat.log,
    beat keeping its schedule in `log_dir`."""
    celery = [sys.executable, "-m", "celery", "-A", "config"]
    return _running(
        {
            "celery-worker": [*celery, "worker", "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
                              "--concurrency", env.get("CELERY_CONCURRENCY") or "2"],
            "celery-beat": [*celery, "beat", "--loglevel", "WARNING", "--schedule",
                            str(log_dir / "celerybeat-schedule")],
        },
        env=env,
        log_dir=log_dir,
    )  # fmt: skip


def backlog() -> int:
    """Orders waiting for a settler: in the intake (Redis), or PENDING_PAYMENT in the database
    (a partial index keeps this count cheap)."""
    return intake.intake_backlog() + Order.objects.filter(status=OrderStatus.PENDING_PAYMENT).count()


class BacklogSampler:
    """Samples the backlog once a second, from k6's start until the backlog has drained."""

    def __init__(self) -> None:
        self.samples: list[BacklogSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = 0.0

    def __enter__(self) -> BacklogSampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                second = int(time.monotonic() - self._started)
                try:
                    self.samples.append(BacklogSample(second, backlog()))
                except (DatabaseError, RedisError):  # a server down (the chaos scenario): no sample
                    connection.close()
                self._stop.wait(1.0)
        finally:
            connection.close()


def wait_until_settled(
    *,
    timeout: float = SETTLE_TIMEOUT_S,
    echo: Callable[[str], None] = print,
    every_s: float = 2.0,
    settlers: list[subprocess.Popen] | None = None,
) -> float | None:
    """Wait until no order is PENDING_PAYMENT, looking every 0.1 s; returns the seconds it took
    (rounded to 0.1 s), or None after `timeout`, or at once when every one of `settlers` has
    exited (nobody is left to drain it). Says how many are left every `every_s`."""
    started = last_said = time.monotonic()
    while (elapsed := time.monotonic() - started) < timeout:
        pending = backlog()
        if pending == 0:
            return round(elapsed, 1)
        if settlers and all(process.poll() is not None for process in settlers):
            codes = ", ".join(str(process.returncode) for process in settlers)
            echo(f"  every settler has exited (codes {codes}) with {pending} orders PENDING_PAYMENT; see their logs")
            return None
        if time.monotonic() - last_said >= every_s:
            echo(f"  {pending} orders still PENDING_PAYMENT after {elapsed:.1f} s")
            last_said = time.monotonic()
        time.sleep(SETTLE_POLL_S)
    return None


def _times_to_paid_ms(*, past: int) -> list[float]:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT EXTRACT(EPOCH FROM paid.created_at - created.created_at) * 1000
            FROM orders_orderevent created
            JOIN orders_orderevent paid ON paid.order_id = created.order_id AND paid.type = %s
            WHERE created.type = %s AND created.order_id > %s
            """,
            [events.PAID, events.CREATED, past],
        )
        return sorted(float(row[0]) for row in cursor.fetchall())


def payment_figures(
    *, samples: list[BacklogSample], drained_after_s: float | None, batches: BatchStats | None = None, past: int = 0
) -> PaymentFigures:
    """The run's orders: those after the `past` ones seeded before it (ids 1..past)."""
    latencies = _times_to_paid_ms(past=past)
    counts = Order.objects.filter(id__gt=past).aggregate(
        orders=Count("id"),
        paid=Count("id", filter=Q(status=OrderStatus.PAID)),
        cancelled=Count("id", filter=Q(status=OrderStatus.CANCELLED)),
    )
    within = sum(1 for ms in latencies if ms <= PAID_WITHIN_MS)
    return PaymentFigures(
        **counts,
        p50_ms=percentile(latencies, 50) if latencies else 0.0,
        p95_ms=percentile(latencies, 95) if latencies else 0.0,
        p99_ms=percentile(latencies, 99) if latencies else 0.0,
        max_ms=latencies[-1] if latencies else 0.0,
        paid_within_1s=within / counts["orders"] if counts["orders"] else 0.0,
        max_backlog=max((s.backlog for s in samples), default=0),
        drained_after_s=drained_after_s,
        batches=batches or BatchStats(),
        backlog=samples,
    )


def batch_stats(texts: list[str]) -> BatchStats:
    """The batches logged in `texts` (settler logs); other lines are skipped."""
    stats = BatchStats()
    for text in texts:
        for line in text.splitlines():
            stats.add(line)
    return stats


def settler_logs(log_dir: Path) -> list[str]:
    return [path.read_text(errors="replace") for path in sorted(log_dir.glob("settler-*.log"))]


# --- checks -----------------------------------------------------------------------------


def async_checks(*, past: int = 0, paid_in_request_too: bool = False) -> list[Check]:
    """Every accepted order ended PAID or CANCELLED, and its events are its status changes: the
    run's orders, after the `past` ones seeded before it (paid inside their request, ids 1..past).
    `paid_in_request_too`: the run also placed orders paid in their request (the chaos scenario's
    --chaos-orders both), whose events are created then paid."""
    placed = Order.objects.filter(id__gt=past)
    unsettled = list(
        placed.exclude(status__in=[OrderStatus.PAID, OrderStatus.CANCELLED]).values_list("id", "status")[:50]
    )
    if not unsettled:  # accepted by the intake and not yet written: ended nothing yet
        unsettled = [(oid, "not yet drained from the intake") for oid in intake.undrained_order_ids()[:50]]
    settled = _check(
        "every 202 ended PAID or CANCELLED",
        [f"order {oid} is {status}" for oid, status in unsettled],
        None,
        "orders unsettled",
        "no order left pending",
    )
    expected = {
        OrderStatus.PAID: [events.CREATED, events.PAYMENT_STARTED, events.PAID],
        OrderStatus.CANCELLED: [events.CREATED, events.PAYMENT_STARTED, events.PAYMENT_FAILED, events.CANCELLED],
    }
    problems = []
    by_order: dict[int, list[str]] = {}
    run_events = OrderEvent.objects.filter(order_id__gt=past).order_by("order_id", "id")
    for order_id, event_type in run_events.values_list("order_id", "type"):
        by_order.setdefault(order_id, []).append(event_type)
    total = 0
    for order_id, status in placed.values_list("id", "status"):
        total += 1
        types = by_order.get(order_id, [])
        wanted = expected.get(status)
        # An order cancelled by the expiry job never started paying: created, cancelled.
        allowed = [wanted, [events.CREATED, events.CANCELLED]] if status == OrderStatus.CANCELLED else [wanted]
        if paid_in_request_too and status == OrderStatus.PAID:
            allowed.append([events.CREATED, events.PAID])
        if types not in allowed:
            problems.append(f"order {order_id} ({status}): {types}")
    matched = _check(
        "events equal status changes",
        problems,
        total,
        "orders whose events differ",
        f"{total} orders, each with its events in order",
    )
    return [settled, matched]
