"""The server's own metrics over a load run: its /metrics scraped once a second while k6 runs
(and, for the async scenario, until the backlog has drained), turned into a time series.

A scrape is what Prometheus would see (kernel/metrics.py, orders/metrics.py): gauges are read
as they are (payment backlog and the age of its oldest order), counters as their increase per
second between two scrapes (orders by outcome, errors by code), histograms from the increase
of their buckets between two scrapes (time to PAID p50/p95 as `histogram_quantile` computes
them, and its mean from `_sum` and `_count`; settlement batch size as a mean). A failed scrape
(refused, timed out, unparsable) is counted and skipped: the next interval spans the gap.

One scrape a second costs the server what a Prometheus at `scrape_interval: 1s` would: adding
up the processes' files and the collectors' few indexed queries, in one gunicorn worker.
"""

from __future__ import annotations

import csv
import http.client
import itertools
import math
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kernel import metrics
from kernel.metrics import by_label

SCRAPE_EVERY_S = 1.0
SCRAPE_TIMEOUT_S = 5.0  # a slow answer delays the next scrape, it never piles scrapes up

BACKLOG = "shop_payment_backlog_orders"
OLDEST_UNPAID = "shop_payment_backlog_oldest_seconds"
ORDERS = "shop_orders_total"
ERRORS = "shop_api_errors_total"
TIME_TO_PAID = "shop_order_time_to_paid_seconds"
BATCH_SIZE = "shop_settlement_batch_size"
# Only these samples are kept from a scrape (a scrape also holds per-route and per-product series).
_KEPT = (BACKLOG, OLDEST_UNPAID, ORDERS, ERRORS, TIME_TO_PAID, BATCH_SIZE)


@dataclass(frozen=True)
class Scrape:
    at: float  # unix seconds when the answer had arrived
    took_s: float  # the request, answer and parsing
    values: dict  # kernel.metrics.samples(), the names of _KEPT only


def parse(text: str, *, at: float, took_s: float = 0.0) -> Scrape:
    """One scrape's text (Prometheus format) as a Scrape."""
    kept = {key: value for key, value in metrics.samples(text).items() if key[0].startswith(_KEPT)}
    return Scrape(at=at, took_s=took_s, values=kept)


def scrape(base_url: str, *, token: str | None = None, timeout: float = SCRAPE_TIMEOUT_S) -> Scrape:
    """GET `base_url`/metrics now; raises OSError, ValueError or HTTPException on a failure."""
    started = time.monotonic()
    request = urllib.request.Request(f"{base_url.rstrip('/')}/metrics")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        text = response.read().decode()
    return parse(text, at=time.time(), took_s=time.monotonic() - started)


# --- from scrapes to a series -----------------------------------------------------------------


def buckets(values: dict, name: str) -> list[tuple[float, float]]:
    """A histogram's cumulative buckets summed over its label sets: [(le, count)], ascending le."""
    return sorted((float(le), count) for le, count in by_label(values, f"{name}_bucket", "le").items())


def increase(later: float, earlier: float) -> float:
    """A counter's increase; a counter that went down was reset (its process's files gone), as
    Prometheus' rate() takes it: everything it holds now is new."""
    return later - earlier if later >= earlier else later


def histogram_quantile(q: float, cumulative: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile on cumulative (le, count) buckets: linear within the bucket
    the rank falls in; in the +Inf bucket, the largest finite bound. None without observations."""
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    rank = q * cumulative[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def bucket_increase(later: dict, earlier: dict, name: str) -> list[tuple[float, float]]:
    before = dict(buckets(earlier, name))
    return [(le, increase(count, before.get(le, 0.0))) for le, count in buckets(later, name)]


@dataclass(frozen=True)
class Point:
    """One interval between two successful scrapes, stamped with the later one's time."""

    second: float  # when the later scrape answered, since the start of k6's series (its chart's axis)
    interval_s: float
    backlog: float | None  # gauges at the later scrape (None: the collector did not answer)
    oldest_unpaid_s: float | None
    orders_per_s: dict[str, float]  # by outcome
    errors_per_s: dict[str, float]  # by code
    paid_async: float  # observations of time to PAID in the interval
    time_to_paid_p50_s: float | None
    time_to_paid_p95_s: float | None
    time_to_paid_mean_s: float | None
    settlement_batches: float
    batch_size_mean: float | None


def _gauge(values: dict, name: str) -> float | None:
    found = [value for (sample, _labels), value in values.items() if sample == name]
    return sum(found) if found else None


def _rates(later: dict, earlier: dict, name: str, label: str, seconds: float) -> dict[str, float]:
    before = by_label(earlier, name, label)
    return {key: increase(value, before.get(key, 0.0)) / seconds for key, value in by_label(later, name, label).items()}


def _count_sum(later: dict, earlier: dict, name: str) -> tuple[float, float]:
    count = increase(metrics.total(later, f"{name}_count"), metrics.total(earlier, f"{name}_count"))
    added = increase(metrics.total(later, f"{name}_sum"), metrics.total(earlier, f"{name}_sum"))
    return count, added


def point(earlier: Scrape, later: Scrape, *, origin: float) -> Point:
    """The interval from `earlier` to `later`; `origin`: the unix second k6's series starts at."""
    seconds = max(later.at - earlier.at, 1e-6)
    paid, paid_sum = _count_sum(later.values, earlier.values, TIME_TO_PAID)
    paid_buckets = bucket_increase(later.values, earlier.values, TIME_TO_PAID)
    batches, batch_sum = _count_sum(later.values, earlier.values, BATCH_SIZE)
    return Point(
        second=later.at - origin,
        interval_s=seconds,
        backlog=_gauge(later.values, BACKLOG),
        oldest_unpaid_s=_gauge(later.values, OLDEST_UNPAID),
        orders_per_s=_rates(later.values, earlier.values, ORDERS, "outcome", seconds),
        errors_per_s=_rates(later.values, earlier.values, ERRORS, "code", seconds),
        paid_async=paid,
        time_to_paid_p50_s=histogram_quantile(0.5, paid_buckets),
        time_to_paid_p95_s=histogram_quantile(0.95, paid_buckets),
        time_to_paid_mean_s=paid_sum / paid if paid else None,
        settlement_batches=batches,
        batch_size_mean=batch_sum / batches if batches else None,
    )


@dataclass
class ServerSeries:
    """The run's server metrics: one point per interval and the run's figures from them."""

    points: list[Point] = field(default_factory=list)
    scrapes: int = 0  # answered
    failed: int = 0
    scrape_ms_mean: float | None = None
    scrape_ms_max: float | None = None
    time_to_paid_p50_s: float | None = None  # over the whole run: first scrape to last
    time_to_paid_p95_s: float | None = None
    paid_async: float = 0.0

    @property
    def peak_backlog(self) -> float | None:
        return max((p.backlog for p in self.points if p.backlog is not None), default=None)

    @property
    def max_oldest_unpaid_s(self) -> float | None:
        return max((p.oldest_unpaid_s for p in self.points if p.oldest_unpaid_s is not None), default=None)

    def total(self, field_name: str, key: str) -> float:
        """What a per-second field (`orders_per_s`, `errors_per_s`) adds up to over the run."""
        return sum(getattr(p, field_name).get(key, 0.0) * p.interval_s for p in self.points)

    def keys(self, field_name: str) -> list[str]:
        return sorted({key for p in self.points for key in getattr(p, field_name)})

    def as_dict(self) -> dict:
        return {
            "scrapes": self.scrapes,
            "failed": self.failed,
            "scrape_ms_mean": self.scrape_ms_mean,
            "scrape_ms_max": self.scrape_ms_max,
            "peak_backlog": self.peak_backlog,
            "max_oldest_unpaid_s": self.max_oldest_unpaid_s,
            "time_to_paid_p50_s": self.time_to_paid_p50_s,
            "time_to_paid_p95_s": self.time_to_paid_p95_s,
            "paid_async": self.paid_async,
            "points": [asdict(p) for p in self.points],
        }


def series(scrapes: list[Scrape], *, origin: float | None, failed: int = 0) -> ServerSeries:
    """The series of `scrapes` (in time order) against k6's time axis starting at the unix
    second `origin` (None, k6 having no series: from the first scrape)."""
    if origin is None:
        origin = scrapes[0].at if scrapes else 0.0
    points = [point(earlier, later, origin=origin) for earlier, later in itertools.pairwise(scrapes)]
    took = [s.took_s * 1000 for s in scrapes]
    found = ServerSeries(points=points, scrapes=len(scrapes), failed=failed)
    if took:
        found.scrape_ms_mean, found.scrape_ms_max = sum(took) / len(took), max(took)
    if len(scrapes) >= 2:
        whole = bucket_increase(scrapes[-1].values, scrapes[0].values, TIME_TO_PAID)
        found.time_to_paid_p50_s = histogram_quantile(0.5, whole)
        found.time_to_paid_p95_s = histogram_quantile(0.95, whole)
        found.paid_async = sum(p.paid_async for p in points)
    return found


def write_csv(path: Path, found: ServerSeries) -> None:
    """One row per interval; a column per outcome and per error code seen in the run."""
    outcomes, codes = found.keys("orders_per_s"), found.keys("errors_per_s")
    header = ["second", "interval_s", "backlog", "oldest_unpaid_s"]
    header += [f"orders_per_s_{o}" for o in outcomes] + [f"errors_per_s_{c}" for c in codes]
    header += ["paid_async", "time_to_paid_p50_s", "time_to_paid_p95_s", "time_to_paid_mean_s"]
    header += ["settlement_batches", "batch_size_mean"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for p in found.points:
            row: list[object] = [round(p.second, 3), round(p.interval_s, 3), p.backlog, _cell(p.oldest_unpaid_s)]
            row += [_cell(p.orders_per_s.get(o, 0.0)) for o in outcomes]
            row += [_cell(p.errors_per_s.get(c, 0.0)) for c in codes]
            row += [p.paid_async, *map(_cell, (p.time_to_paid_p50_s, p.time_to_paid_p95_s, p.time_to_paid_mean_s))]
            row += [p.settlement_batches, _cell(p.batch_size_mean)]
            writer.writerow(["" if cell is None else cell for cell in row])


def _cell(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


# --- the sampler --------------------------------------------------------------------------------

FAILURES = (OSError, ValueError, http.client.HTTPException)  # urllib's errors (HTTPError too), a bad text


class Sampler:
    """Scrapes `base_url`/metrics once a second in a thread, from entering (a first scrape
    before k6 starts, the baseline of every rate) to leaving (a last one after it stopped)."""

    def __init__(self, base_url: str, *, token: str | None = None, every_s: float = SCRAPE_EVERY_S) -> None:
        self.base_url, self.token, self.every_s = base_url, token, every_s
        self.scrapes: list[Scrape] = []
        self.failed = 0
        self.last_failure = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="server-metrics", daemon=True)

    def __enter__(self) -> Sampler:
        self.scrape_once()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.scrape_once()

    def scrape_once(self) -> None:
        try:
            found = scrape(self.base_url, token=self.token)
        except FAILURES as exc:
            with self._lock:
                self.failed += 1
                self.last_failure = f"{type(exc).__name__}: {exc}"
            return
        with self._lock:
            self.scrapes.append(found)

    def _run(self) -> None:
        # On a fixed grid: a slow scrape skips the ticks it overran instead of drifting.
        started = time.monotonic()
        tick = 1
        while not self._stop.wait(max(0.0, started + tick * self.every_s - time.monotonic())):
            self.scrape_once()
            tick = max(tick + 1, math.floor((time.monotonic() - started) / self.every_s) + 1)

    def series(self, *, origin: float | None) -> ServerSeries:
        with self._lock:
            return series(list(self.scrapes), origin=origin, failed=self.failed)
