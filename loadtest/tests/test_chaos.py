"""The chaos scenario: its fault schedule, the windows read from k6's answers, its refusal to
touch servers it did not start, and one short run end to end with real faults."""

from __future__ import annotations

import json
import time

import pytest
from django.core.management import CommandError, call_command

from config import local
from devtools.testing import free_port
from loadtest.chaos import (
    Answer,
    Fault,
    Injected,
    Injector,
    ScheduleError,
    Targets,
    default_schedule,
    parse_schedule,
    windows,
)


def test_a_schedule_reads_as_written_in_time_order_and_pg_stop_lasts_10_s_unless_told():
    assert parse_schedule("pg-stop@40s+5s, redis-kill@20s,pg-stop@60s,web-worker-kill@1.5s") == [
        Fault("web-worker-kill", 1.5),
        Fault("redis-kill", 20.0),
        Fault("pg-stop", 40.0, 5.0),
        Fault("pg-stop", 60.0, 10.0),
    ]


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "no fault"),
        ("redis-kill", "write <fault>@<seconds>s"),
        ("redis-kill@20", "write <fault>@<seconds>s"),
        ("disk-full@20s", "unknown fault 'disk-full'"),
        ("redis-kill@20s+5s", "only pg-stop lasts"),
    ],
)
def test_a_schedule_that_cannot_be_read_says_why(text, problem):
    with pytest.raises(ScheduleError, match=problem):
        parse_schedule(text)


def test_the_default_schedule_scales_its_times_with_the_run_but_not_the_stop():
    assert [(f.kind, f.at_s, f.hold_s) for f in default_schedule(0.5)][:2] == [
        ("redis-kill", 20.0, 0.0),
        ("pg-stop", 40.0, 10.0),
    ]


def test_a_fault_window_runs_from_its_first_to_its_last_failed_answer_and_recovers_at_the_next_success():
    pg_stop = Injected(Fault("pg-stop", 10, 3), started_ms=10_000, ended_ms=13_000, detail="")
    worker = Injected(Fault("web-worker-kill", 14), started_ms=14_000, ended_ms=14_000, detail="")
    answers = [Answer(ms, status) for ms, status in [
        (9_000, 202), (10_500, 202), (11_000, 503), (12_000, 0), (13_500, 503),  # pg-stop and after
        (14_100, 502), (14_500, 202), (15_000, 202),  # the worker's; the first success after both
    ]]  # fmt: skip

    first, second = windows([pg_stop, worker], answers, origin_ms=0)

    assert (first.errors_from_s, first.errors_to_s) == (11.0, 13.5)
    assert first.recovered_after_s == 4.5  # its last error at 13.5 s, the next success at 14.5 s
    assert first.during == {"0": 1, "202": 1, "503": 1}  # while PostgreSQL was stopped
    assert first.answers == {"0": 1, "202": 2, "502": 1, "503": 2}
    assert (second.errors_from_s, second.errors_to_s, second.recovered_after_s) == (14.1, 14.1, 0.5)


def test_a_fault_that_did_nothing_or_came_after_k6_is_named_as_not_injected():
    nobody = Targets(gunicorn_pid=2**22 + 1, settlers=[], periodic=[], restart=lambda dead, name: dead)
    with Injector([Fault("web-worker-kill", 0), Fault("redis-kill", 600)], nobody, echo=lambda _: None) as injector:
        deadline = time.monotonic() + 5
        while not injector.not_injected and time.monotonic() < deadline:
            time.sleep(0.01)

    assert injector.injected == []
    assert injector.not_injected[0].startswith("web-worker-kill@0s (failed: ProcessLookupError")
    assert injector.not_injected[1:] == ["redis-kill@600s (k6 had ended)"]


def test_faults_are_refused_against_a_server_the_run_did_not_start():
    with pytest.raises(CommandError, match="only into servers the run starts itself"):
        call_command("loadtest", scenario="chaos", url="http://127.0.0.1:1", reseed=True)


def test_the_default_schedule_kills_a_whole_host_only_with_two_hosts_or_more():
    assert "host-kill" not in [f.kind for f in default_schedule(1.0)]
    assert [f.name for f in default_schedule(0.5, hosts=2) if f.kind == "host-kill"] == ["host-kill@72.5s"]


def test_a_host_kill_is_refused_without_a_second_host_and_chaos_with_two_counts_of_hosts():
    with pytest.raises(CommandError, match="host-kill kills a whole host while another one serves: it needs --hosts 2"):
        call_command("loadtest", scenario="chaos", faults="redis-kill@1s,host-kill@5s")
    with pytest.raises(CommandError, match=r"not with .* two counts of --hosts"):
        call_command("loadtest", "--scenario", "chaos", "--hosts", "1,2")


def test_faults_go_with_the_chaos_scenario_only():
    with pytest.raises(CommandError, match="--faults and --chaos-orders go with --scenario chaos"):
        call_command("loadtest", scenario="smoke", faults="redis-kill@1s")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    not local.uses_own_database(),
    reason="stops PostgreSQL and kills Redis: only the project's own servers (DATABASE_URL unset)",
)
def test_a_short_chaos_run_with_redis_killed_and_postgresql_stopped_balances_the_books(tmp_path):
    reports = tmp_path / "reports"
    call_command("loadtest", scenario="chaos", duration_scale=0.1, vus=10, port=free_port(), reports_dir=reports,
                 faults="redis-kill@5s,pg-stop@9s+5s", no_idempotency_key=True)  # fmt: skip

    (report_dir,) = reports.iterdir()
    summary = json.loads((report_dir / "summary.json").read_text())
    assert summary["invariants_hold"], summary["invariants"]
    checks = {check["name"] for check in summary["invariants"]}
    assert {"nothing charged twice", "only 202 or 503 while PostgreSQL was stopped", "orders match 201 answers",
            "every 202 ended PAID or CANCELLED", "stock conserved", "money conserved"} <= checks  # fmt: skip
    chaos = summary["chaos"]
    assert [w["name"] for w in chaos["windows"]] == ["redis-kill@5s", "pg-stop@9s+5s"]
    stop = chaos["windows"][1]
    assert stop["ended_s"] - stop["started_s"] >= 5
    assert set(stop["during"]) <= {"202", "503"} and stop["during"].get("202")  # accepted by Redis alone
    assert stop["recovered_after_s"] is not None
    report = (report_dir / "report.md").read_text()
    assert "## Faults" in report
    assert "| redis-kill@5s |" in report and "| pg-stop@9s+5s |" in report
    assert (report_dir / "chart.png").read_bytes().startswith(b"\x89PNG")
