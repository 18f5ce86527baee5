"""End to end: `manage.py loadtest --scenario smoke` seeds, serves, loads, checks and reports.

gunicorn runs against this test's database (test_shop) and Redis database (15): the runner
hands it the URLs of the connections this process uses. About three seconds of k6; no speed is
asserted, only that the run answered orders, the invariants held, the report exists, and the
server's own metrics, scraped during the run, counted every order k6 saw answered.
"""

import json
import os

import pytest
from django.core.management import CommandError, call_command

from devtools import netns
from devtools.testing import free_port
from inventory import redis_counts
from loadtest.machine import web_server_config
from loadtest.runner import RunOptions, comparison_runs, environment_set, redis_durability_set
from loadtest.server import server_environment


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_smoke_scenario_runs_end_to_end_and_writes_its_report(tmp_path):
    reports = tmp_path / "reports"
    call_command("loadtest", scenario="smoke", duration_scale=0.3, port=free_port(), reports_dir=reports)

    (report_dir,) = reports.iterdir()
    assert report_dir.name.endswith("-smoke")
    summary = json.loads((report_dir / "summary.json").read_text())
    assert summary["invariants_hold"], summary["invariants"]
    assert summary["figures"]["orders_created"] > 0
    assert summary["figures"]["requests"] >= summary["figures"]["orders_created"]
    assert "orders match 201 answers" in {check["name"] for check in summary["invariants"]}
    assert "| invariant | result | detail |" in (report_dir / "report.md").read_text()
    assert (report_dir / "chart.png").read_bytes().startswith(b"\x89PNG")
    assert (report_dir / "k6-timeseries.csv.gz").exists()
    # k6's own CPU and the whole machine's, beside the servers' (the machine ran them all).
    use = summary["cpu"]
    assert use["load_generator_ms"] > 0 and use["redis_ms"] > 0
    assert use["machine_ms"] > use["load_generator_ms"] + use["request_ms"] * 0.9
    # The server's own metrics, scraped once a second from before k6's first order to after its last.
    server = summary["server_metrics"]
    assert server["scrapes"] >= 2
    paid = sum(point["orders_per_s"].get("paid", 0.0) * point["interval_s"] for point in server["points"])
    assert paid == pytest.approx(summary["figures"]["orders_created"])
    assert [point["second"] for point in server["points"]] == sorted(point["second"] for point in server["points"])
    csv_rows = (report_dir / "server-metrics.csv").read_text().splitlines()
    assert csv_rows[0].startswith("second,interval_s,backlog,oldest_unpaid_s,")
    assert len(csv_rows) == 1 + len(server["points"])
    assert "## Server metrics over time" in (report_dir / "report.md").read_text()
    assert (report_dir / "server-metrics.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_short_async_run_reports_the_servers_backlog_and_time_to_paid(tmp_path):
    reports = tmp_path / "reports"
    call_command("loadtest", scenario="async", duration_scale=0.05, vus=5, port=free_port(), reports_dir=reports)

    (report_dir,) = reports.iterdir()
    summary = json.loads((report_dir / "summary.json").read_text())
    assert summary["invariants_hold"], summary["invariants"]
    server = summary["server_metrics"]
    accepted = sum(point["orders_per_s"].get("accepted", 0.0) * point["interval_s"] for point in server["points"])
    assert accepted == pytest.approx(summary["figures"]["orders_created"])
    # The last batch's observations may land just after the last scrape (they follow its commit).
    assert 0 < server["paid_async"] <= summary["payments"]["paid"]
    assert 0 < server["time_to_paid_p50_s"] <= server["time_to_paid_p95_s"]
    assert any(point["batch_size_mean"] for point in server["points"])
    report = (report_dir / "report.md").read_text()
    assert "| time to PAID p50, whole run (histogram) | - |" not in report


@pytest.mark.parametrize(
    "args, problem",
    [
        (["--compare", "--url", "http://127.0.0.1:1"], "--compare starts its own servers"),
        (["--strategy", "old", "--url", "http://127.0.0.1:1"], "with --url, that server's ORDER_STRATEGY decides"),
        (["--scenario", "ceiling", "--with-ceiling"], "measures the same thing twice"),
        (["--duration-scale", "0"], "--duration-scale must be positive"),
        (["--scenario", "async", "--settlers", "0"], "--settlers must be at least 1"),
        (["--scenario", "async", "--settlers", "2", "--url", "http://127.0.0.1:1"], "that deployment's own settlers"),
        (["--scenario", "async", "--compare", "--url", "http://127.0.0.1:1"], "--compare starts its own servers"),
        (["--compare-env", "GUNICORN_WORKERS=2", "--url", "http://127.0.0.1:1"], "it cannot use --url"),
        (["--compare-env", "GUNICORN_WORKERS=2", "--baseline-env", "GUNICORN_WORKERS=2"], "the same environment"),
        (["--compare-env", "GUNICORN_WORKERS=2", "--compare"], "--compare and --compare-env each make two runs"),
        (["--baseline-env", "GUNICORN_WORKERS=2"], "--baseline-env goes with --compare-env"),
        (["--compare-env", "gunicorn_workers=2"], "invalid environment_overrides value"),
        (["--compare-env", "GUNICORN_WORKERS"], "invalid environment_overrides value"),
        (["--hosts", "2", "--url", "http://127.0.0.1:1"], "--hosts starts its own hosts"),
        (["--hosts", "0"], "--hosts counts between 1 and"),
        (["--hosts", "1,2,3"], "--hosts takes one count"),
        (["--hosts", "2,2"], "--hosts takes one count"),
        (["--hosts", "1,2", "--compare"], "--compare and --hosts 1,2 each make two runs"),
        (["--hosts", "1,2", "--compare-env", "WEB_SERVER=granian"], "--compare-env and --hosts 1,2 each make two runs"),
        (["--hosts", "two"], "a count of hosts"),
    ],
)
def test_options_that_cannot_work_together_are_refused_before_anything_runs(args, problem):
    with pytest.raises(CommandError, match=problem):
        call_command("loadtest", *args)


@pytest.mark.parametrize(
    "options, runs",
    [
        (RunOptions(scenario="load", compare=True), [("old", "load", "old"), ("new", "load", "new")]),
        (RunOptions(scenario="async", compare=True), [("sync", "load", "new"), ("async", "async", "new")]),
        (
            RunOptions(scenario="async", compare=True, strategy="old"),
            [("sync", "load", "old"), ("async", "async", "old")],
        ),
        (RunOptions(scenario="load", hosts=(1, 2)), [("hosts-1", "load", "new"), ("hosts-2", "load", "new")]),
    ],
)
def test_compare_means_old_then_new_strategy_but_for_async_sync_then_async(options, runs):
    made = [(folder, run_options.scenario, strategy) for folder, run_options, strategy in comparison_runs(options)]

    assert made == runs


def test_compare_env_runs_the_baseline_environment_then_the_candidate_one():
    options = RunOptions(
        scenario="async",
        compare_environments=((("ORDER_ASYNC_INTAKE", "database"),), (("ORDER_ASYNC_INTAKE", "redis"),)),
    )

    made = [(folder, o.scenario, o.environment, strategy) for folder, o, strategy in comparison_runs(options)]

    assert made == [
        ("baseline", "async", (("ORDER_ASYNC_INTAKE", "database"),), "new"),
        ("candidate", "async", (("ORDER_ASYNC_INTAKE", "redis"),), "new"),
    ]


def test_a_runs_environment_is_set_for_its_processes_and_put_back_after(monkeypatch):
    monkeypatch.setenv("GUNICORN_WORKERS", "3")
    monkeypatch.delenv("GUNICORN_THREADS", raising=False)

    with environment_set((("GUNICORN_WORKERS", "1"), ("GUNICORN_THREADS", "2")), echo=lambda _: None):
        assert "1 gthread workers x 2 thread(s)" in web_server_config()
        assert server_environment(strategy="new")["GUNICORN_THREADS"] == "2"

    assert os.environ["GUNICORN_WORKERS"] == "3"
    assert "GUNICORN_THREADS" not in os.environ


def test_a_runs_redis_appendfsync_goes_to_the_running_redis_and_is_put_back_after():
    client = redis_counts.redis_client()
    before = client.config_get("appendfsync")["appendfsync"]
    other = "everysec" if before != "everysec" else "always"

    with redis_durability_set({"REDIS_APPENDFSYNC": other}, echo=lambda _: None):
        assert client.config_get("appendfsync")["appendfsync"] == other

    assert client.config_get("appendfsync")["appendfsync"] == before


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_compare_env_starts_each_runs_server_with_its_own_environment(tmp_path):
    reports = tmp_path / "reports"
    call_command("loadtest", "--compare-env", "GUNICORN_WORKERS=2", "--baseline-env", "GUNICORN_WORKERS=1",
                 scenario="smoke", duration_scale=0.3, port=free_port(), reports_dir=reports)  # fmt: skip

    (report_dir,) = reports.iterdir()
    assert report_dir.name.endswith("-smoke-env")
    for folder, workers in (("baseline", 1), ("candidate", 2)):
        summary = json.loads((report_dir / folder / "summary.json").read_text())
        assert summary["invariants_hold"], summary["invariants"]
        assert summary["environment"] == {"GUNICORN_WORKERS": str(workers)}
        assert f"with {workers} workers seen in /proc" in summary["processes"]["web server"]
    comparison = (report_dir / "report.md").read_text()
    assert "# Load test: smoke, GUNICORN_WORKERS=1 vs GUNICORN_WORKERS=2" in comparison
    assert "| metric | GUNICORN_WORKERS=1 | GUNICORN_WORKERS=2 | candidate / baseline |" in comparison


def test_hosts_1_2_runs_one_host_then_two():
    made = [run_options.hosts for _, run_options, _ in comparison_runs(RunOptions(hosts=(1, 2)))]

    assert made == [(1,), (2,)]


def test_hosts_where_namespaces_cannot_be_made_is_refused_with_the_reason(monkeypatch):
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)  # as an unprivileged user

    with pytest.raises(CommandError, match=r"--hosts needs network namespaces.*needs root.*uid 1000"):
        call_command("loadtest", "--hosts", "2")


@pytest.mark.parametrize(
    "args, problem",
    [
        (["--orders", "0"], "--orders must be at least 1"),
        (["--batch-sizes", "1,ten"], "comma-separated whole numbers"),
        (["--batch-sizes", "10,0"], "batch sizes of at least 1"),
        (["--batch-sizes", ","], "batch sizes of at least 1"),
        (["--timeout", "0"], "--timeout must be positive"),
    ],
)
def test_settle_benchmark_refuses_bad_options_before_anything_runs(args, problem):
    with pytest.raises(CommandError, match=problem):
        call_command("settle_benchmark", *args)
