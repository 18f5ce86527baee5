"""The settlers' figures without settlers: their log lines added up, and the benchmark's
arithmetic (a settler's start-up left out) on made-up measurements."""

import pytest

from loadtest.async_run import batch_stats
from loadtest.settle_benchmark import BatchSizeResult, Measured, parse_batch_sizes, results_table

LOG = """\
2026-01-05 10:00:00,001 INFO 4242 orders.settlement: settled batch: 500 paid, 0 cancelled, 0 retried in 180.5 ms
2026-01-05 10:00:00,190 INFO 4242 orders.settlement: settled batch: 498 paid, 2 cancelled, 1 retried in 176 ms
settler: stopped after 3 batches: 1001 paid, 2 cancelled
2026-01-05 10:00:00,300 INFO 4242 orders.settlement: settled batch: 3 paid, 0 cancelled, 0 retried in 4.5 ms
"""


def test_batch_lines_add_up_and_other_lines_are_skipped():
    stats = batch_stats([LOG, "settler: waiting for orders to pay\n"])

    assert (stats.batches, stats.paid, stats.cancelled, stats.retried) == (3, 1001, 2, 1)
    assert (stats.settled, stats.largest, stats.busy_ms) == (1003, 500, pytest.approx(361.0))
    assert stats.mean_batch == pytest.approx(1003 / 3)


def test_no_log_means_no_batches_not_a_division_by_zero():
    assert batch_stats([]).mean_batch == 0.0


@pytest.mark.slow
def test_benchmark_leaves_the_settlers_start_up_out_of_rate_and_cpu():
    result = BatchSizeResult(
        batch_size=100,
        orders=3000,
        startup=Measured(wall_s=1.0, cpu_ms=600.0, postgres_ms=30.0),
        placement=Measured(wall_s=10.0, cpu_ms=6000.0, postgres_ms=3000.0),
        settle=Measured(wall_s=2.5, cpu_ms=2100.0, postgres_ms=930.0),
        batches=batch_stats([LOG]),
    )

    assert result.orders_per_s == pytest.approx(2000.0)
    assert result.settler_cpu_ms_per_order == pytest.approx(0.5)
    assert result.postgres_cpu_ms_per_order == pytest.approx(0.3)
    assert (result.placement_cpu_ms_per_order, result.placement_postgres_ms_per_order) == (2.0, 1.0)
    assert "| 100 | 2,000.0 | 0.50 | 0.30 | 2.00 / 1.00 |" in results_table([result])


def test_benchmark_without_postgres_on_this_machine_says_n_a():
    unmeasured = Measured(wall_s=1.0, cpu_ms=600.0, postgres_ms=None)
    result = BatchSizeResult(1, 10, unmeasured, unmeasured, Measured(2.0, 700.0, None), batch_stats([]))

    assert result.postgres_cpu_ms_per_order is None
    assert "| 1 | 10.0 | 10.00 | n/a | 60.00 / n/a |" in results_table([result])


def test_batch_sizes_parse_from_a_comma_separated_list():
    assert parse_batch_sizes("1,10, 100,500") == (1, 10, 100, 500)


def test_the_start_up_kept_is_the_least_of_its_runs_and_pg_unknown_if_any_run_missed_it():
    runs = [Measured(1.0, 550.0, 40.0), Measured(0.5, 520.0, 45.0)]

    assert Measured.least(runs) == Measured(0.5, 520.0, 40.0)
    assert Measured.least([*runs, Measured(0.6, 500.0, None)]).postgres_ms is None
