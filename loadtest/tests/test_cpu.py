"""CPU per process tree from /proc: the parsing, the tree walk on real processes, and missing pids."""

import os
import subprocess
import sys
import time

import pytest

from loadtest import cpu
from loadtest.cpu import CpuMeter, CpuUse, parse_stat

# A real line's shape (fields 14-17: utime 1234, stime 56, cutime 7, cstime 3), with a command
# name that holds the spaces and parentheses a process may give itself.
STAT_LINE = (
    "4242 (gunicorn: worker (flash) ) S 4200 4200 4200 0 -1 4194560 14589 0 0 0 1234 56 7 3 20 0 1 0 "
    "35967 3133440 359 18446744073709551615 1 1 0 0 0 0 0 16781312 16386 0 0 0 17 1 0 0 0 0 0"
)


def test_a_stat_line_gives_pid_parent_and_all_four_cpu_fields_whatever_the_command_name():
    stat = parse_stat(STAT_LINE)

    assert (stat.pid, stat.comm, stat.ppid, stat.ticks) == (4242, "gunicorn: worker (flash) ", 4200, 1234 + 56 + 7 + 3)


def test_this_process_own_stat_parses():
    stat = cpu.read_stat(os.getpid())

    assert stat is not None and stat.pid == os.getpid() and stat.ppid == os.getppid()


def _unused_pid() -> int:
    pid = 4_000_000  # above the kernel's pid_max unless raised
    while os.path.exists(f"/proc/{pid}"):
        pid += 1
    return pid


def test_a_missing_pid_reads_as_unknown_not_an_error():
    gone = _unused_pid()

    assert cpu.read_stat(gone) is None
    assert cpu.tree_cpu_ms([gone]) is None
    meter = CpuMeter({"request": [gone], "settlement": []})
    meter.start()
    meter.stop("request", "settlement", "postgres")
    assert meter.used_ms == {"request": None}


def test_a_tree_counts_a_busy_child_and_keeps_its_time_once_it_has_exited():
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    parent = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys, time; subprocess.run([sys.executable, '-c', {burn!r}]); "
         "time.sleep(30)"],
    )  # fmt: skip
    try:
        meter = CpuMeter({"tree": [parent.pid]})
        meter.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            meter.stop("tree")
            if meter.used_ms["tree"] >= 300 and not cpu.children(parent.pid):
                break
            time.sleep(0.05)
        # The child burnt its 0.3 s and exited: its time lives on in the parent's reaped-children fields.
        assert not cpu.children(parent.pid)
        assert meter.used_ms["tree"] >= 300
    finally:
        parent.kill()
        parent.wait()


@pytest.mark.parametrize(
    "use, per_order",
    [
        (CpuUse(orders=4, request_ms=10.0, settlement_ms=2.0, postgres_ms=6.0), (2.5, 0.5, 1.5, 4.5)),
        # Redis counts in the total; k6 and the whole machine stand beside it, not in it.
        (
            CpuUse(orders=4, request_ms=10.0, postgres_ms=6.0, redis_ms=4.0, load_generator_ms=8.0, machine_ms=40.0),
            (2.5, None, 1.5, 5.0),
        ),
        (CpuUse(orders=4, request_ms=10.0, postgres_ms=6.0), (2.5, None, 1.5, 4.0)),
        (CpuUse(orders=4, request_ms=10.0), (2.5, None, None, None)),
        (CpuUse(orders=0, request_ms=10.0, postgres_ms=6.0), (None, None, None, None)),
    ],
)
def test_cpu_per_order_by_side_and_in_total(use, per_order):
    data = use.as_dict()

    names = ("request_ms", "settlement_ms", "postgres_ms", "total_ms")
    assert tuple(data[f"{name}_per_order"] for name in names) == per_order


def test_the_redis_server_this_process_uses_is_found_on_this_machine():
    (pid,) = cpu.redis_server_pids()

    assert cpu.read_stat(pid).comm.startswith("redis")


@pytest.mark.django_db
def test_with_stock_on_a_cluster_every_node_is_counted_beside_the_one_redis(stock_on_cluster):
    pids = cpu.redis_server_pids()

    assert len(pids) == 1 + len(stock_on_cluster.ports) and len(set(pids)) == len(pids)
    assert all(cpu.read_stat(pid).comm.startswith("redis") for pid in pids)


def test_the_whole_machine_counts_what_a_busy_process_burns():
    before = cpu.machine_busy_ms()
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass

    assert cpu.machine_busy_ms() - before >= 300 * 0.9  # ticks are 10 ms: one may fall either side
