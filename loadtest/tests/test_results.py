"""The report maths on small synthetic k6 outputs: no server, no database."""

import gzip
import json

import pytest

from loadtest.async_run import BacklogSample, BatchStats, PaymentFigures
from loadtest.cpu import CpuUse
from loadtest.invariants import Check
from loadtest.machine import steal_share
from loadtest.report import (
    RunResult,
    async_comparison,
    hosts_comparison,
    strategy_comparison,
    write_comparison_report,
    write_run_report,
)
from loadtest.results import figures, percentile, read_timeseries

HEADER = (
    "metric_name,timestamp,metric_value,check,error_code,expected_response,method,scenario,status,extra_tags,metadata"
)
T0 = 1_700_000_000_000  # ms


def request_rows(at_ms: int, duration_ms: float, status: int = 201) -> list[str]:
    tags = f",,{'true' if status == 201 else 'false'},POST,load,{status},,"
    rows = [f"http_reqs,{at_ms},1.000000,{tags}", f"http_req_duration,{at_ms},{duration_ms:.6f},{tags}"]
    if status == 201:
        rows.append(f"orders_created,{at_ms},1.000000,,,,,load,,,")
    else:
        rows.append(
            f"errors_by_code,{at_ms},1.000000,,,,,load,,code={'OUT_OF_STOCK' if status == 409 else 'HTTP_500'},"
        )
    return rows


def synthetic_csv(path) -> None:
    """Four seconds: 1, 2, 2, 0 VUs; 2, 4, 4, 1 requests."""
    rows = [f"vus,{T0 + s * 1000},{vus}.000000,,,,,,,," for s, vus in enumerate([1, 2, 2, 0])]
    rows += request_rows(T0 + 100, 10) + request_rows(T0 + 900, 20)
    for offset, duration in zip((1100, 1200, 1300, 1999), (10, 20, 30, 40), strict=True):
        rows += request_rows(T0 + offset, duration)
    for offset, duration, status in zip(
        (2000, 2100, 2200, 2300), (100, 200, 300, 400), (201, 201, 409, 500), strict=True
    ):
        rows += request_rows(T0 + offset, duration, status)
    rows += request_rows(T0 + 3500, 5)
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join([HEADER, *rows]) + "\n")


def synthetic_summary(*, p99_crossed: bool) -> dict:
    return {
        "metrics": {
            "http_reqs": {"count": 11, "rate": 2.75},
            "http_req_duration": {
                "avg": 103.2, "min": 5, "med": 30, "max": 400, "p(90)": 300, "p(95)": 350, "p(99)": 390,
                "thresholds": {"p(99)<200": p99_crossed},
            },
            "http_req_failed": {"value": 2 / 11, "thresholds": {"rate<0.01": True}},
            "unexpected_answers": {"value": 1 / 11, "thresholds": {"rate<0.01": True}},
            "orders_created": {"count": 9, "rate": 2.25},
        }
    }  # fmt: skip


@pytest.mark.parametrize(
    ("values", "p", "expected"),
    [
        ([5.0], 99, 5.0),
        ([1.0, 2.0], 50, 1.5),
        ([1.0, 2.0, 3.0, 4.0], 0, 1.0),
        ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
        ([10.0, 20.0, 30.0, 40.0], 99, 39.7),
        ([float(v) for v in range(1, 101)], 99, 99.01),
        ([float(v) for v in range(1, 101)], 95, 95.05),
    ],
)
def test_percentile_interpolates_between_closest_ranks_like_k6(values, p, expected):
    assert percentile(values, p) == pytest.approx(expected)


def test_time_series_buckets_requests_latency_and_vus_per_second(tmp_path):
    path = tmp_path / "series.csv.gz"
    synthetic_csv(path)

    series = read_timeseries(path)

    assert [b.requests for b in series.buckets] == [2, 4, 4, 1]
    assert [b.orders for b in series.buckets] == [2, 4, 2, 1]
    assert [b.vus for b in series.buckets] == [1, 2, 2, 0]
    second = series.buckets[1]
    assert (second.p50, second.p95, second.p99) == pytest.approx((25.0, 38.5, 39.7))
    assert series.peak_vus == 2
    assert series.throughput_at_peak() == 4.0  # seconds 1 and 2; the partial first and last are left out
    assert series.statuses == {"201": 9, "409": 1, "500": 1}
    assert series.errors_by_code == {"OUT_OF_STOCK": 1, "HTTP_500": 1}
    assert series.first_second == T0 // 1000  # bucket 0's unix second: the server metrics align on it


def test_figures_take_k6_summary_and_read_thresholds_as_crossed_flags(tmp_path):
    path = tmp_path / "series.csv.gz"
    synthetic_csv(path)

    result = figures(scenario="load", summary=synthetic_summary(p99_crossed=False), series=read_timeseries(path))

    assert result.requests == 11
    assert result.failure_rate == pytest.approx(1 / 11)  # the scenario's rule, not http_req_failed
    assert result.success_rate == pytest.approx(10 / 11)
    assert result.http_req_failed_rate == pytest.approx(2 / 11)
    assert result.latency_ms["p(99)"] == 390
    assert (result.rps, result.rps_at_peak, result.orders_created) == (2.75, 4.0, 9)
    assert result.thresholds == {
        "http_req_duration p(99)<200": True,
        "http_req_failed rate<0.01": False,
        "unexpected_answers rate<0.01": False,
    }
    assert not result.thresholds_passed


def _result(tmp_path, strategy: str, rps: float, p99: float, scenario: str = "load", **extra) -> RunResult:
    path = tmp_path / f"{strategy}-{scenario}.csv.gz"
    synthetic_csv(path)
    series = read_timeseries(path)
    summary = synthetic_summary(p99_crossed=True)
    summary["metrics"]["http_reqs"]["rate"] = rps
    summary["metrics"]["http_req_duration"]["p(99)"] = p99
    return RunResult(
        scenario=scenario, strategy=strategy, started_at="2025-01-01T00:00:00+00:00", duration_scale=0.1,
        base_url="http://127.0.0.1:8089", shape={"users": 500}, figures=figures(scenario="load", summary=summary,
        series=series), series=series, k6_exit_code=99, invariants=[Check("stock conserved", True, "ok")],
        server_counters={"balance_version_conflicts": 3}, machine={"cores": "2"}, ceiling=None, **extra,
    )  # fmt: skip


def test_run_report_writes_markdown_json_and_chart(tmp_path):
    result = _result(tmp_path, "new", rps=100.0, p99=50.0)

    write_run_report(tmp_path / "run", result)

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["figures"]["rps"] == 100.0
    assert summary["invariants_hold"] is True
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| p99 latency | 50.0 ms |" in report
    assert "balance_version_conflicts" in report
    # The synthetic run peaks at 2 VUs and 4 req/s: 2 / 4 s per request, 10 req/s for p99 < 200 ms.
    assert "a request took about 500.0 ms on average at the peak (2 / 4.0 req/s, Little's law)" in report
    assert "A mean under 200 ms, which p99 < 200 ms needs, takes more than 10 req/s at this concurrency" in report
    assert (tmp_path / "run" / "chart.png").read_bytes().startswith(b"\x89PNG")


def test_comparison_report_gives_new_over_old_ratios(tmp_path):
    old = _result(tmp_path, "old", rps=30.0, p99=6000.0)
    new = _result(tmp_path, "new", rps=300.0, p99=60.0)

    write_comparison_report(tmp_path / "compare", strategy_comparison(old, new))

    ratios = json.loads((tmp_path / "compare" / "summary.json").read_text())["ratios_new_over_old"]
    assert ratios["p99 latency"] == pytest.approx(0.01)
    assert ratios["throughput, whole run (k6 http_reqs rate)"] == pytest.approx(10.0)
    report = (tmp_path / "compare" / "report.md").read_text()
    assert "| p99 latency | 6.00 s | 60.0 ms | 0.01x |" in report
    assert (tmp_path / "compare" / "chart.png").exists()


@pytest.mark.parametrize(
    "before, after, expected",
    [
        ((1000, 50), (3000, 150), "5.0% of CPU time"),
        ((1000, 50), (1000, 50), "unknown"),
        (None, (3000, 150), "unknown"),
    ],
)
def test_steal_share_is_the_hosts_part_of_the_cpu_time_between_two_readings(before, after, expected):
    assert steal_share(before, after) == expected


PAYMENTS = PaymentFigures(
    orders=9, paid=8, cancelled=1, p50_ms=120.0, p95_ms=850.0, p99_ms=1500.0, max_ms=2100.0, paid_within_1s=0.75,
    max_backlog=412, drained_after_s=3.4, batches=BatchStats(batches=4, paid=8, cancelled=1, largest=5, busy_ms=30.0),
    backlog=[BacklogSample(0, 0), BacklogSample(1, 412), BacklogSample(2, 90), BacklogSample(3, 0)],
)  # fmt: skip


def test_async_run_report_shows_payments_backlog_processes_and_cpu_per_order(tmp_path):
    result = _result(
        tmp_path, "new", rps=100.0, p99=50.0, scenario="async", payments=PAYMENTS,
        processes={"web server": "gunicorn, 4 sync workers", "settlers": "2 x `manage.py settle_payments`"},
        cpu=CpuUse(orders=9, request_ms=45.0, settlement_ms=9.0, postgres_ms=18.0),
    )  # fmt: skip

    write_run_report(tmp_path / "run", result)

    report = (tmp_path / "run" / "report.md").read_text()
    assert "| accepted orders PAID within 1 s | 75.00% |" in report
    assert "| backlog (orders PENDING_PAYMENT), max | 412 |" in report
    assert "| backlog drained after k6 stopped | 3.4 s |" in report
    assert "| settlement batches (settlers' logs) | 4 (mean 2.2 orders, largest 5; 0 retried) |" in report
    assert "- settlers: 2 x `manage.py settle_payments`" in report
    assert "| request side: gunicorn master and workers | 5.00 |" in report
    assert "| settlement side: settlers | 1.00 |" in report
    assert "| all of these | 8.00 |" in report
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["cpu"]["request_ms_per_order"] == 5.0
    assert summary["payments"]["backlog"][1] == {"second": 1, "backlog": 412}
    assert summary["processes"]["settlers"].startswith("2 x")


def test_async_comparison_puts_sync_and_async_side_by_side_with_async_over_sync_ratios(tmp_path):
    sync = _result(tmp_path, "new", rps=300.0, p99=400.0, cpu=CpuUse(orders=9, request_ms=90.0, postgres_ms=27.0))
    asynchronous = _result(
        tmp_path, "new", rps=600.0, p99=100.0, scenario="async", payments=PAYMENTS,
        cpu=CpuUse(orders=9, request_ms=36.0, settlement_ms=18.0, postgres_ms=18.0),
    )  # fmt: skip

    write_comparison_report(tmp_path / "compare", async_comparison(sync, asynchronous))

    report = (tmp_path / "compare" / "report.md").read_text()
    assert "| metric | sync (201) | async (202) | async / sync |" in report
    assert "| p99 latency | 400.0 ms | 100.0 ms | 0.25x |" in report
    assert "| throughput, whole run (k6 http_reqs rate) | 300.00 req/s | 600.00 req/s | 2.00x |" in report
    assert "| time from 202 to PAID p99 | - | 1.50 s |" in report
    assert "| accepted orders PAID within 1 s | - | 75.00% |" in report
    assert "| backlog drained after k6 stopped | - | 3.4 s |" in report
    assert "| request side: gunicorn master and workers | 10.00 | 4.00 | 0.40x |" in report
    assert "| settlement side: settlers | - | 2.00 |  |" in report
    assert "| all of these | 13.00 | 8.00 | 0.62x |" in report
    assert "[sync](sync/report.md), [async](async/report.md)" in report
    summary = json.loads((tmp_path / "compare" / "summary.json").read_text())
    assert set(summary) == {"sync", "async", "ratios_async_over_sync"}
    assert summary["ratios_async_over_sync"]["throughput, whole run (k6 http_reqs rate)"] == pytest.approx(2.0)
    assert summary["ratios_async_over_sync"]["CPU ms per order, all of these"] == pytest.approx(8 / 13)
    assert (tmp_path / "compare" / "chart.png").read_bytes().startswith(b"\x89PNG")


def test_each_hosts_requests_and_orders_come_from_k6s_tagged_counts_and_are_not_thresholds(tmp_path):
    path = tmp_path / "series.csv.gz"
    synthetic_csv(path)
    summary = synthetic_summary(p99_crossed=False)
    for host, requests, orders in (("h2", 5, 4), ("h1", 6, 5)):
        summary["metrics"][f"http_reqs{{host:{host}}}"] = {"count": requests, "thresholds": {"count>=0": False}}
        summary["metrics"][f"orders_created{{host:{host}}}"] = {"count": orders, "thresholds": {"count>=0": False}}

    result = figures(scenario="load", summary=summary, series=read_timeseries(path))

    assert result.by_host == {"h1": {"requests": 6, "orders": 5}, "h2": {"requests": 5, "orders": 4}}
    assert list(result.by_host) == ["h1", "h2"]
    assert set(result.thresholds) == {
        "http_req_duration p(99)<200",
        "http_req_failed rate<0.01",
        "unexpected_answers rate<0.01",
    }


def test_hosts_comparison_puts_one_and_two_hosts_side_by_side_and_says_it_shows_cost(tmp_path):
    one, two = _result(tmp_path, "new", rps=300.0, p99=60.0), _result(tmp_path, "new", rps=270.0, p99=80.0)
    one.figures.by_host = {"h1": {"requests": 11, "orders": 9}}
    two.figures.by_host = {"h1": {"requests": 6, "orders": 5}, "h2": {"requests": 5, "orders": 4}}

    write_comparison_report(tmp_path / "hosts", hosts_comparison(one, two))

    ratios = json.loads((tmp_path / "hosts" / "summary.json").read_text())["ratios_hosts-2_over_hosts-1"]
    assert ratios["throughput, whole run (k6 http_reqs rate)"] == pytest.approx(0.9)
    report = (tmp_path / "hosts" / "report.md").read_text()
    assert "# Load test: load, 1 host(s) vs 2 host(s)" in report
    assert "not the speed-up separate machines would give" in report
    assert "[hosts-1](hosts-1/report.md), [hosts-2](hosts-2/report.md)" in report
    assert "| h2 | 5 | 4 |" in report
