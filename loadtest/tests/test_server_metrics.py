"""The server's metrics over a run (loadtest.server_metrics), from real scrapes of a real
gunicorn with a real settler beside it: gauges as read, counters as rates whose sum is what
was counted, time to PAID and batch size from the histograms' increase; a failed scrape is
counted and skipped."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request

import pytest

from accounts.services import token_create
from devtools.testing import free_port, make_product, make_user, order_body, wait_for
from kernel import metrics
from loadtest import async_run, server, server_metrics
from loadtest.server_metrics import Sampler, histogram_quantile, increase, series

pytestmark = [
    pytest.mark.usefixtures("database_intake"),  # the database's asynchronous path (the intake: test_intake.py)
    pytest.mark.django_db(transaction=True),  # gunicorn and the settler commit on their own connections
]
INF = math.inf


def _post_order(base_url: str, token: str, body: dict, *, asynchronous: bool = False) -> int:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if asynchronous:
        headers["Prefer"] = "respond-async"
    request = urllib.request.Request(
        f"{base_url}/api/v1/orders", data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as refused:
        return refused.code


@pytest.mark.slow
def test_a_series_of_real_scrapes_holds_the_backlog_the_rates_and_the_time_to_paid(tmp_path):
    product, scarce = make_product(price=1, stock_quantity=100), make_product(price=1, stock_quantity=1)
    rich, poor = make_user(balance=1_000), make_user(balance=0)
    rich_token, poor_token = token_create(user=rich).key, token_create(user=poor).key
    with server.web_server(strategy="new", port=free_port(), log_path=tmp_path / "gunicorn.log") as served:
        before = server_metrics.scrape(served.base_url)
        statuses = [
            *(_post_order(served.base_url, rich_token, order_body(rich, (product, 1)), asynchronous=True)
              for _ in range(3)),
            _post_order(served.base_url, rich_token, order_body(rich, (product, 1))),
            _post_order(served.base_url, rich_token, order_body(rich, (scarce, 2))),
            _post_order(served.base_url, poor_token, order_body(poor, (product, 1))),
        ]  # fmt: skip
        waiting = server_metrics.scrape(served.base_url)
        with (tmp_path / "settler.log").open("ab") as log:
            settler = async_run.start_settler(env=server.server_environment(strategy="new"), log=log, until_empty=True)
            assert settler.wait(timeout=60) == 0, (tmp_path / "settler.log").read_text()
        after = server_metrics.scrape(served.base_url)

    assert statuses == [202, 202, 202, 201, 409, 409]
    found = series([before, waiting, after], origin=before.at)
    placing, settling = found.points
    assert (found.scrapes, found.failed) == (3, 0)
    assert placing.second == pytest.approx(waiting.at - before.at)
    assert placing.interval_s == pytest.approx(waiting.at - before.at)
    # Gauges as the server read them.
    assert placing.backlog == 3 and placing.oldest_unpaid_s > 0
    assert settling.backlog == 0 and settling.oldest_unpaid_s == 0
    assert found.peak_backlog == 3 and found.max_oldest_unpaid_s == placing.oldest_unpaid_s
    # Counters as rates: over their interval they add up to what the server counted.
    assert placing.orders_per_s["accepted"] * placing.interval_s == pytest.approx(3)
    assert placing.orders_per_s["paid"] * placing.interval_s == pytest.approx(1)
    assert placing.errors_per_s["OUT_OF_STOCK"] * placing.interval_s == pytest.approx(1)
    assert placing.errors_per_s["INSUFFICIENT_BALANCE"] * placing.interval_s == pytest.approx(1)
    assert settling.orders_per_s["accepted"] == 0
    assert found.total("orders_per_s", "accepted") == pytest.approx(3)
    # Histograms: nothing paid while placing; the settler's batches and each order's time to PAID after.
    assert (placing.paid_async, placing.time_to_paid_p50_s, placing.settlement_batches) == (0, None, 0)
    assert settling.paid_async == 3 and found.paid_async == 3
    assert settling.batch_size_mean * settling.settlement_batches == pytest.approx(3)
    paid_sum = metrics.total(after.values, "shop_order_time_to_paid_seconds_sum")
    assert settling.time_to_paid_mean_s == pytest.approx(paid_sum / 3)
    # The median of three observations lies in the bucket that holds the second of them (read
    # off the raw cumulative counts here, not through the quantile function under test).
    cumulative = server_metrics.buckets(after.values, "shop_order_time_to_paid_seconds")
    bounds = [0.0] + [le for le, _ in cumulative]
    second = next(i for i, (_, count) in enumerate(cumulative) if count >= 2)
    assert bounds[second] < settling.time_to_paid_p50_s <= bounds[second + 1]
    assert settling.time_to_paid_p50_s == found.time_to_paid_p50_s
    assert settling.time_to_paid_p50_s <= settling.time_to_paid_p95_s == found.time_to_paid_p95_s

    written = tmp_path / "server-metrics.csv"
    server_metrics.write_csv(written, found)
    header, *rows = written.read_text().splitlines()
    assert header.split(",")[:4] == ["second", "interval_s", "backlog", "oldest_unpaid_s"]
    assert "orders_per_s_accepted" in header and "errors_per_s_OUT_OF_STOCK" in header
    assert len(rows) == 2


@pytest.mark.parametrize(
    ("q", "cumulative", "expected"),
    [
        (0.5, [(0.1, 0), (0.5, 10), (INF, 10)], 0.3),  # linear inside the bucket the rank falls in
        (0.5, [(0.1, 4), (INF, 4)], 0.05),  # the first bucket starts at 0
        (0.95, [(0.1, 1), (0.5, 1), (INF, 4)], 0.5),  # in +Inf: the largest finite bound
        (0.5, [(0.1, 0), (INF, 0)], None),  # nothing observed
        (0.5, [], None),
    ],
)
def test_histogram_quantile_is_prometheus_rule(q, cumulative, expected):
    assert histogram_quantile(q, cumulative) == (None if expected is None else pytest.approx(expected))


def test_a_counter_that_went_down_was_reset_and_counts_from_zero():
    assert (increase(15, 10), increase(4, 10)) == (5, 4)


def test_a_sampler_against_no_server_counts_each_failed_scrape_and_keeps_no_point():
    with Sampler(f"http://127.0.0.1:{free_port()}", every_s=0.05) as sampler:
        wait_for(lambda: sampler.failed >= 3, what="three failed scrapes")

    found = sampler.series(origin=0)
    assert found.scrapes == 0 and found.failed >= 4  # with the last one, on the way out
    assert found.points == [] and found.peak_backlog is None
    assert "ConnectionRefusedError" in sampler.last_failure or "URLError" in sampler.last_failure
