"""The settlement benchmark: how fast one settler pays a backlog, and the CPU one order costs
it and PostgreSQL, for each batch size.

For each batch size, on freshly reseeded data:
1. a settler's start-up alone: `settle_payments --until-empty` on the empty backlog (imports,
   Django setup, connecting), twice, the least kept, so it can be taken off the timed run;
2. N orders placed PENDING_PAYMENT through the real service (`orders.services.order_place`
   with `asynchronous=True`), in this process: the service's own cost, no HTTP; its CPU is
   this process's (time.process_time) and PostgreSQL's;
3. ONE `settle_payments --batch-size B --until-empty`, timed from its start to its exit.

A settler's CPU is its rusage once reaped (RUSAGE_CHILDREN before and after: it is this
process's only child then); PostgreSQL's is read from /proc when the server runs on this
machine (its postmaster and backends; autovacuum and the checkpointer count too, as they
would in production). Orders per second and CPU per order leave the start-up out.
"""

from __future__ import annotations

import math
import random
import resource
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from django.test import override_settings

from loadtest import async_run, cpu, seeding, server
from loadtest.async_run import BatchStats
from loadtest.machine import cpu_times, machine_info, steal_share
from loadtest.runner import REPORTS_DIR, prepare
from orders.models import Order, OrderStatus
from orders.services import OrderLine, order_place

DEFAULT_ORDERS = 3000
DEFAULT_BATCH_SIZES = (1, 10, 100, 500)
SHAPE = seeding.SeedShape()  # the load tests' shop: 500 users, 5 products at price 1
SETTLE_TIMEOUT_S = 600.0
PROGRESS_EVERY_S = 1.0
EXIT_POLL_S = 0.02  # the settler's wall time is read to this resolution
STARTUP_RUNS = 2  # a cold first start (files not yet in the page cache) would overstate it

Echo = Callable[[str], None]


class BenchmarkFailed(RuntimeError):
    pass


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """ "1,10,100,500" -> (1, 10, 100, 500); anything but positive integers is refused."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--batch-sizes takes comma-separated whole numbers, not {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--batch-sizes must list batch sizes of at least 1, not {text!r}")
    return sizes


@dataclass(frozen=True)
class BenchmarkOptions:
    orders: int = DEFAULT_ORDERS
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    reports_dir: Path = REPORTS_DIR
    timeout_s: float = SETTLE_TIMEOUT_S

    def problems(self) -> list[str]:
        found = []
        if self.orders < 1:
            found.append("--orders must be at least 1")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            found.append("--batch-sizes must list batch sizes of at least 1")
        if self.timeout_s <= 0:
            found.append("--timeout must be positive")
        return found


@dataclass(frozen=True)
class Measured:
    """One step's wall time, the CPU of whoever did it, and PostgreSQL's (None: not measurable)."""

    wall_s: float
    cpu_ms: float
    postgres_ms: float | None

    @staticmethod
    def least(measured: list[Measured]) -> Measured:
        """The least of each figure: what a start-up costs at best, noise left out."""
        postgres = [m.postgres_ms for m in measured if m.postgres_ms is not None]
        return Measured(min(m.wall_s for m in measured), min(m.cpu_ms for m in measured),
                        min(postgres) if len(postgres) == len(measured) else None)  # fmt: skip


@dataclass(frozen=True)
class BatchSizeResult:
    batch_size: int
    orders: int
    startup: Measured  # a settler on the empty backlog
    placement: Measured  # order_place in this process
    settle: Measured  # one settler paying the backlog, start-up included
    batches: BatchStats

    def _less_startup(self, settled: float | None, startup: float | None) -> float | None:
        return None if settled is None or startup is None else max(settled - startup, 0.0)

    @property
    def orders_per_s(self) -> float | None:
        wall = self._less_startup(self.settle.wall_s, self.startup.wall_s)
        return self.orders / wall if wall else None

    @property
    def settler_cpu_ms_per_order(self) -> float:
        return (self._less_startup(self.settle.cpu_ms, self.startup.cpu_ms) or 0.0) / self.orders

    @property
    def postgres_cpu_ms_per_order(self) -> float | None:
        used = self._less_startup(self.settle.postgres_ms, self.startup.postgres_ms)
        return None if used is None else used / self.orders

    @property
    def placement_cpu_ms_per_order(self) -> float:
        return self.placement.cpu_ms / self.orders

    @property
    def placement_postgres_ms_per_order(self) -> float | None:
        return None if self.placement.postgres_ms is None else self.placement.postgres_ms / self.orders


# --- measuring --------------------------------------------------------------------------


def _postgres_meter(postgres_pid: int | None) -> cpu.CpuMeter:
    """PostgreSQL's CPU from now on (its side stays unmeasured when it is not on this machine)."""
    meter = cpu.CpuMeter({"postgres": [postgres_pid] if postgres_pid else []})
    meter.start()
    return meter


def _postgres_used(meter: cpu.CpuMeter) -> float | None:
    meter.stop("postgres")
    return meter.used_ms.get("postgres")


def _children_cpu_ms() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (usage.ru_utime + usage.ru_stime) * 1000


def place_orders(*, count: int, postgres_pid: int | None, echo: Echo) -> Measured:
    """`count` orders PENDING_PAYMENT through the order service; the same orders every time
    (a fixed seed): 1 to 3 lines of 1 to 5 units, as the k6 scenarios send."""
    rng = random.Random(0)
    postgres, cpu_before, started = _postgres_meter(postgres_pid), time.process_time(), time.monotonic()
    last_said = started
    # The backlog is built on purpose, no settler running: the door's bound (503 once the oldest
    # unpaid order has waited PAYMENT_BACKLOG_MAX_SECONDS) would refuse it after a few seconds.
    # Its check still runs, as on every asynchronous order.
    with override_settings(PAYMENT_BACKLOG_MAX_SECONDS=math.inf):
        for number in range(1, count + 1):
            lines = [
                OrderLine(product_id=rng.randint(1, SHAPE.products), quantity=rng.randint(1, 5), seen_price=SHAPE.price)
                for _ in range(rng.randint(1, 3))
            ]
            order_place(user_id=rng.randint(1, SHAPE.users), lines=lines, asynchronous=True)
            if time.monotonic() - last_said >= PROGRESS_EVERY_S or number == count:
                elapsed = time.monotonic() - started
                echo(f"  placed {number}/{count} orders ({number / elapsed:.0f}/s)")
                last_said = time.monotonic()
    wall, cpu_ms = time.monotonic() - started, (time.process_time() - cpu_before) * 1000
    return Measured(wall, cpu_ms, _postgres_used(postgres))


def run_settler(
    *, batch_size: int, log_path: Path, postgres_pid: int | None, timeout_s: float, echo: Echo, expected: int = 0
) -> tuple[Measured, BatchStats]:
    """One settler with --until-empty, timed to its exit; with `expected`, says each second how
    far it got (from its log: no queries that would count as PostgreSQL's work)."""
    env = server.server_environment(strategy="new")
    postgres, cpu_before, started = _postgres_meter(postgres_pid), _children_cpu_ms(), time.monotonic()
    last_said = started
    with log_path.open("ab") as log:
        process = async_run.start_settler(env=env, log=log, batch_size=batch_size, until_empty=True)
        try:
            while True:
                try:
                    process.wait(timeout=EXIT_POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                if now - started > timeout_s:
                    raise BenchmarkFailed(f"the settler (batch size {batch_size}) ran past {timeout_s:.0f} s")
                if expected and now - last_said >= PROGRESS_EVERY_S:
                    stats = async_run.batch_stats([log_path.read_text(errors="replace")])
                    echo(f"  settled {stats.settled}/{expected} in {stats.batches} batches")
                    last_said = now
        finally:
            server.stop(process, timeout=async_run.SETTLER_STOP_TIMEOUT_S)
    wall, cpu_ms = time.monotonic() - started, _children_cpu_ms() - cpu_before
    text = log_path.read_text(errors="replace")
    if process.returncode != 0:
        raise BenchmarkFailed(f"the settler exited with code {process.returncode}; its log ends:\n{text[-2000:]}")
    return Measured(wall, cpu_ms, _postgres_used(postgres)), async_run.batch_stats([text])


def measure_batch_size(batch_size: int, options: BenchmarkOptions, out_dir: Path, echo: Echo) -> BatchSizeResult:
    echo(f"batch size {batch_size}: reseeding ({_shape_text()})")
    seeding.seed(SHAPE)
    postgres_pid = cpu.postgres_server_pid()
    echo(f"  a settler's start-up alone, on the empty backlog ({STARTUP_RUNS} times, the least kept)")
    startups = [
        run_settler(batch_size=batch_size, log_path=out_dir / f"startup-{batch_size}.log", postgres_pid=postgres_pid,
                    timeout_s=options.timeout_s, echo=echo)[0]
        for _ in range(STARTUP_RUNS)
    ]  # fmt: skip
    startup = Measured.least(startups)
    placement = place_orders(count=options.orders, postgres_pid=postgres_pid, echo=echo)
    if postgres_pid:
        cpu.wait_until_idle([postgres_pid], timeout=10)  # let the placement's writes settle in PostgreSQL
    echo(f"  one settler, batch size {batch_size}, until the backlog is empty")
    settle, batches = run_settler(batch_size=batch_size, log_path=out_dir / f"settler-{batch_size}.log",
                                  postgres_pid=postgres_pid, timeout_s=options.timeout_s, echo=echo,
                                  expected=options.orders)  # fmt: skip
    left = Order.objects.filter(status=OrderStatus.PENDING_PAYMENT).count()
    paid = Order.objects.filter(status=OrderStatus.PAID).count()
    if left or paid != options.orders:
        raise BenchmarkFailed(f"batch size {batch_size}: {paid} of {options.orders} orders PAID, {left} still pending")
    result = BatchSizeResult(batch_size, options.orders, startup, placement, settle, batches)
    echo(f"  {_row(result)}")
    return result


# --- the report -------------------------------------------------------------------------


def _shape_text() -> str:
    return ", ".join(f"{name} {value}" for name, value in asdict(SHAPE).items())


def _number(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


HEADER = "| batch size | orders/s | settler CPU ms/order | PG CPU ms/order | placement CPU ms/order (Python / PG) |"


def _row(r: BatchSizeResult) -> str:
    placement = f"{_number(r.placement_cpu_ms_per_order)} / {_number(r.placement_postgres_ms_per_order)}"
    return (
        f"| {r.batch_size} | {_number(r.orders_per_s, 1)} | {_number(r.settler_cpu_ms_per_order)} | "
        f"{_number(r.postgres_cpu_ms_per_order)} | {placement} |"
    )


def _detail_row(r: BatchSizeResult) -> str:
    return (
        f"| {r.batch_size} | {r.batches.batches:,} (mean {r.batches.mean_batch:.1f}) | {r.settle.wall_s:.2f} s | "
        f"{r.settle.cpu_ms:,.0f} ms | {r.startup.wall_s:.2f} s / {r.startup.cpu_ms:,.0f} ms | "
        f"{r.batches.busy_ms / 1000:.2f} s | {r.placement.wall_s:.2f} s |"
    )


def results_table(results: list[BatchSizeResult]) -> str:
    return "\n".join([HEADER, "|---|---|---|---|---|", *(_row(r) for r in results)])


def render(results: list[BatchSizeResult], *, started_at: str, orders: int, machine: dict[str, str]) -> str:
    details = [
        "| batch size | batches (mean size) | settler wall | settler CPU | start-up wall / CPU (taken off) "
        "| inside batches (settler's log) | placement wall |",
        "|---|---|---|---|---|---|---|",
        *(_detail_row(r) for r in results),
    ]
    return "\n".join([
        "# Settlement benchmark\n",
        f"Started {started_at}. For each batch size, on freshly reseeded data ({_shape_text()}): {orders:,} orders "
        "placed PENDING_PAYMENT through `orders.services.order_place(asynchronous=True)` in one process "
        "(no HTTP), then ONE `manage.py settle_payments --batch-size B --until-empty`.\n",
        results_table(results),
        "",
        "orders/s: orders / the settler's wall time from its start to its exit. Settler CPU: its user + system time "
        "(RUSAGE_CHILDREN once reaped). PG CPU: the PostgreSQL server's processes while the settler ran "
        "(/proc; n/a when the server is not on this machine). All three leave out a settler's start-up, "
        "measured first on the empty backlog (the least of two runs). Placement: this process's CPU "
        "(the order service in Python) and PostgreSQL's while the orders were placed, per order.\n",
        "## Details\n",
        *details,
        "",
        "## Machine\n",
        "\n".join(f"- {key}: {value}" for key, value in machine.items()),
        "",
    ])  # fmt: skip


def run(options: BenchmarkOptions, *, echo: Echo = print) -> tuple[Path, list[BatchSizeResult]]:
    """Measure every batch size; writes <reports_dir>/<stamp>-settle-benchmark.md (and its logs
    beside it, in the folder of the same name)."""
    problems = options.problems()
    if problems:
        raise BenchmarkFailed("; ".join(problems))
    prepare(echo)
    started = datetime.now()
    stamp = started.strftime("%Y%m%d-%H%M%S")
    logs = options.reports_dir / f"{stamp}-settle-benchmark"
    logs.mkdir(parents=True, exist_ok=True)
    cpu_before = cpu_times()
    results = [measure_batch_size(size, options, logs, echo) for size in options.batch_sizes]
    machine = machine_info(k6=None, server="one settler per batch size, started by the benchmark",
                           steal=steal_share(cpu_before, cpu_times()), steal_during="the benchmark")  # fmt: skip
    report = options.reports_dir / f"{stamp}-settle-benchmark.md"
    started_at = started.astimezone().isoformat(timespec="seconds")
    report.write_text(render(results, started_at=started_at, orders=options.orders, machine=machine))
    return report, results
