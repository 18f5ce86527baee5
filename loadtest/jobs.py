"""The periodic jobs beat runs, timed on the data a load run leaves: what the size of the data
(customers, products, past orders) costs them, beside what it costs the order path.

Each job runs once, as beat would run it, after the invariants were checked: reconciliation and
the expiry of unpaid orders (each every minute), then each hourly trim to the end of what it
finds (no time budget), then each trim once more, which is what an hourly run costs once the
backlog is gone. The trims delete what is past its retention, as they would in production.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from inventory.reconciliation import inventory_reconcile
from orders.retention import TRIMS
from orders.services import orders_expire_pending

NO_BUDGET_S = 24 * 3600.0


@dataclass(frozen=True)
class JobTiming:
    job: str
    seconds: float
    outcome: str


def _timed(job: str, run: Callable[[], str]) -> JobTiming:
    started = time.monotonic()
    outcome = run()
    return JobTiming(job, time.monotonic() - started, outcome)


def _reconcile() -> str:
    report = inventory_reconcile()
    return f"{len(report.products)} products checked, {len(report.drifted)} drifted"


def _expire() -> str:
    return f"{len(orders_expire_pending())} unpaid orders cancelled"


def _trim(trim) -> Callable[[], str]:
    def run() -> str:
        result = trim(time_budget_seconds=NO_BUDGET_S)
        return f"{result.deleted:,} deleted in {result.batches} batches"

    return run


def time_periodic_jobs(*, echo: Callable[[str], None] = lambda _: None) -> list[JobTiming]:
    jobs = [("reconciliation (every minute)", _reconcile), ("expiry of unpaid orders (every minute)", _expire)]
    jobs += [(f"trim {name} (hourly), first run", _trim(trim)) for name, trim in TRIMS.items()]
    jobs += [(f"trim {name} (hourly), next run", _trim(trim)) for name, trim in TRIMS.items()]
    timings = []
    for job, run in jobs:
        timing = _timed(job, run)
        echo(f"  {job}: {timing.seconds:.2f} s, {timing.outcome}")
        timings.append(timing)
    return timings
