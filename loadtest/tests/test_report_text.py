"""The report text, byte for byte, for fixed runs: a plain run, a run with every section, a
comparison with every section and a plain one. The expected text is in golden/*.md; after a
change meant to change the reports, write it again and review the diff:
`DJANGO_SETTINGS_MODULE=config.settings python -c "import django; django.setup();
from loadtest.tests.test_report_text import write_golden; write_golden()"`."""

from dataclasses import replace
from pathlib import Path

import pytest

from loadtest.async_run import BacklogSample, BatchStats, PaymentFigures
from loadtest.cpu import CpuUse
from loadtest.invariants import Check
from loadtest.jobs import JobTiming
from loadtest.report import RunResult, render_comparison, render_run, shape_comparison, strategy_comparison
from loadtest.results import Figures, TimeSeries
from loadtest.server_metrics import Point, ServerSeries

GOLDEN = Path(__file__).parent / "golden"


def _figures(*, rps: float, p99: float, orders: int, passed: bool = True) -> Figures:
    return Figures(
        scenario="load", requests=orders + 3, success_rate=0.98, failure_rate=0.02, http_req_failed_rate=0.015,
        latency_ms={"avg": 80.5, "min": 2.0, "med": 40.0, "max": 2400.0, "p(90)": 150.0, "p(95)": 300.0,
                    "p(99)": p99},
        rps=rps, rps_at_peak=rps * 1.2, peak_vus=50, orders_created=orders, orders_per_s=rps * 0.9,
        statuses={"201": orders, "409": 2, "500": 1}, errors_by_code={"OUT_OF_STOCK": 2, "HTTP_500": 1},
        thresholds={"http_req_duration p(99)<200": passed, "unexpected_answers rate<0.01": True},
    )  # fmt: skip


def _point(second: float, backlog: float, paid: float) -> Point:
    return Point(
        second=second, interval_s=1.0, backlog=backlog, oldest_unpaid_s=backlog / 100,
        orders_per_s={"accepted": 120.0, "paid": paid}, errors_per_s={"OUT_OF_STOCK": 1.5},
        paid_async=paid, time_to_paid_p50_s=0.2, time_to_paid_p95_s=0.9, time_to_paid_mean_s=0.3,
        settlement_batches=3.0, batch_size_mean=40.0,
    )  # fmt: skip


SERVER = ServerSeries(
    points=[_point(1.0, 300.0, 100.0), _point(2.0, 80.0, 140.0)], scrapes=3, failed=1, scrape_ms_mean=12.4,
    scrape_ms_max=30.0, time_to_paid_p50_s=0.25, time_to_paid_p95_s=1.4, paid_async=240.0,
)  # fmt: skip
PAYMENTS = PaymentFigures(
    orders=240, paid=238, cancelled=2, p50_ms=120.0, p95_ms=850.0, p99_ms=1500.0, max_ms=2100.0,
    paid_within_1s=0.75, max_backlog=300, drained_after_s=3.4,
    batches=BatchStats(batches=6, paid=238, cancelled=2, largest=60, busy_ms=30.0),
    backlog=[BacklogSample(0, 0), BacklogSample(1, 300), BacklogSample(2, 80), BacklogSample(3, 0)],
)  # fmt: skip
JOBS = [JobTiming("reconciliation", 0.12, "5 products checked, 0 drifted"), JobTiming("expiry", 0.03, "0 expired")]
PROCESSES = {"web server": "gunicorn, 4 sync workers", "settlers": "2 x `manage.py settle_payments`"}


def _run(strategy: str, *, rps: float, p99: float, scenario: str = "load", **extra) -> RunResult:
    return RunResult(
        scenario=scenario, strategy=strategy, started_at="2025-01-01T00:00:00+00:00", duration_scale=0.5,
        base_url="http://127.0.0.1:8089", shape={"users": 500, "products": 5, "orders": 0},
        figures=_figures(rps=rps, p99=p99, orders=240), series=TimeSeries(), k6_exit_code=0,
        invariants=[Check("stock conserved", True, "ok"), Check("money conserved", False, "off by 3")],
        server_counters={"balance_version_conflicts": 3, "stock_retries": 7}, machine={"cores": "2"}, **extra,
    )  # fmt: skip


def _full(strategy: str, *, rps: float, p99: float, scenario: str = "sellout", ceiling: bool = True) -> RunResult:
    return _run(
        strategy, rps=rps, p99=p99, scenario=scenario, payments=PAYMENTS, processes=PROCESSES, jobs=JOBS,
        cpu=CpuUse(orders=240, request_ms=1200.0, settlement_ms=240.0, postgres_ms=480.0, periodic_ms=24.0,
                   redis_ms=120.0, load_generator_ms=360.0, machine_ms=2640.0),
        server_metrics=SERVER, ceiling=_figures(rps=rps * 4, p99=20.0, orders=0) if ceiling else None,
    )  # fmt: skip


def rendered() -> dict[str, str]:
    """Each golden file's name and the text today's code renders for it."""
    given = _run("new", rps=90.0, p99=70.0)
    given.shape = {"users": 5000, "products": 50, "orders": 100000}
    return {
        "run-plain.md": render_run(_run("new", rps=100.0, p99=50.0)),
        "run-full.md": render_run(_full("new", rps=100.0, p99=250.0)),
        "comparison-full.md": render_comparison(
            strategy_comparison(
                replace(_full("old", rps=30.0, p99=6000.0, ceiling=False), payments=None, jobs=None),
                _full("new", rps=300.0, p99=60.0),
            )
        ),
        "comparison-plain.md": render_comparison(shape_comparison(_run("new", rps=100.0, p99=50.0), given)),
    }


@pytest.mark.parametrize("name", sorted(rendered()))
def test_the_report_text_for_fixed_runs_is_the_golden_text(name):
    assert rendered()[name] == (GOLDEN / name).read_text()


def write_golden() -> None:
    GOLDEN.mkdir(exist_ok=True)
    for name, text in rendered().items():
        (GOLDEN / name).write_text(text)
