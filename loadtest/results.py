"""Read k6's own output: the end-of-test summary (--summary-export) and the time series (--out csv).

The whole-run figures (avg, p90, p95, p99, max, request rate, threshold results) are k6's own,
as the seed report quotes them. The time series gives what the summary cannot: per-second
throughput and latency percentiles, the VU curve, and the answers by status and error code.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# "At the peak VUs" means every second with at least this share of the peak: the spike
# profile touches its peak for an instant only.
PEAK_SHARE = 0.9


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """k6's rule (p in 0..100): linear interpolation between the two closest ranks."""
    if not sorted_values:
        return math.nan
    rank = p / 100 * (len(sorted_values) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


@dataclass(frozen=True)
class Bucket:
    """One second of the run: requests completed in it, their latency, the VUs running."""

    second: int
    requests: int
    orders: int
    vus: int
    p50: float | None
    p95: float | None
    p99: float | None


@dataclass
class TimeSeries:
    buckets: list[Bucket] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    errors_by_code: dict[str, int] = field(default_factory=dict)
    first_second: int = 0  # the unix second bucket 0 stands for: other series align on it

    @property
    def peak_vus(self) -> int:
        return max((b.vus for b in self.buckets), default=0)

    def throughput_at_peak(self) -> float:
        """Mean requests per second over the seconds with at least PEAK_SHARE of the peak VUs.

        The first and last second of the run are partial and left out when anything else is left.
        """
        inner = self.buckets[1:-1] or self.buckets
        near_peak = [b.requests for b in inner if self.peak_vus and b.vus >= PEAK_SHARE * self.peak_vus]
        return sum(near_peak) / len(near_peak) if near_peak else 0.0


def _millis(timestamp: str) -> int:
    """k6 writes unix seconds by default and milliseconds with K6_CSV_TIME_FORMAT=unix_milli."""
    value = int(timestamp)
    return value if value > 100_000_000_000 else value * 1000


def _tags(extra: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in extra.split("&") if "=" in pair)


SERIES_METRICS = frozenset({"http_req_duration", "http_reqs", "vus", "orders_created", "errors_by_code"})


def read_timeseries(path: Path) -> TimeSeries:
    """Bucket k6's per-sample CSV (plain or .gz) into wall-clock seconds, numbered from the first.

    A load run writes millions of rows: plain csv.reader, only the metrics the report uses.
    """
    durations: dict[int, list[float]] = defaultdict(list)
    requests: Counter[int] = Counter()
    orders: Counter[int] = Counter()
    vus: dict[int, int] = {}
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as handle:
        reader = csv.reader(handle)
        column = {name: index for index, name in enumerate(next(reader, []))}
        name_at, time_at, value_at = column.get("metric_name"), column.get("timestamp"), column.get("metric_value")
        status_at, tags_at = column.get("status"), column.get("extra_tags")
        for row in reader:
            name = row[name_at]
            if name not in SERIES_METRICS:
                continue
            second, value = _millis(row[time_at]) // 1000, float(row[value_at])
            if name == "http_req_duration":
                durations[second].append(value)
            elif name == "http_reqs":
                requests[second] += 1
                statuses[(row[status_at] if status_at is not None else "") or "none"] += 1
            elif name == "vus":
                vus[second] = max(vus.get(second, 0), int(value))
            elif name == "orders_created":
                orders[second] += int(value)
            else:  # errors_by_code, tagged with the answer's code
                errors[_tags(row[tags_at] if tags_at is not None else "").get("code", "UNKNOWN")] += int(value)
    seconds = [*durations, *requests, *vus]
    first, last = min(seconds, default=0), max(seconds, default=-1)
    buckets, running = [], 0
    for second in range(first, last + 1):
        running = vus.get(second, running)  # k6 samples VUs once a second; carry it forward
        values = sorted(durations.get(second, []))
        p50, p95, p99 = (percentile(values, p) if values else None for p in (50, 95, 99))
        buckets.append(Bucket(second - first, requests[second], orders[second], running, p50, p95, p99))
    return TimeSeries(buckets=buckets, statuses=dict(statuses), errors_by_code=dict(errors), first_second=first)


def read_summary(path: Path) -> dict:
    return json.loads(path.read_text())


@dataclass
class Figures:
    """The seed report's table for one k6 run, plus what it left out. Latencies in ms."""

    scenario: str
    requests: int
    success_rate: float
    failure_rate: float
    http_req_failed_rate: float
    latency_ms: dict[str, float]
    rps: float
    rps_at_peak: float
    peak_vus: int
    orders_created: int
    orders_per_s: float
    statuses: dict[str, int]
    errors_by_code: dict[str, int]
    thresholds: dict[str, bool]
    by_host: dict[str, dict[str, int]] = field(default_factory=dict)  # "h1" -> requests, orders (--hosts)

    @property
    def thresholds_passed(self) -> bool:
        return all(self.thresholds.values())


def thresholds(summary: dict) -> dict[str, bool]:
    """`{"http_req_duration p(99)<200": passed}`. Beware: in k6's summary-export a threshold's
    value is true when it was crossed, i.e. failed."""
    return {
        f"{name} {expression}": not crossed
        for name, metric in summary["metrics"].items()
        for expression, crossed in metric.get("thresholds", {}).items()
        if not _HOST_METRIC.fullmatch(name)  # the per-host counts (by_host), not thresholds
    }


# k6/lib.js's per-host counts: "http_reqs{host:h1}", "orders_created{host:h2}"
_HOST_METRIC = re.compile(r"(?P<metric>http_reqs|orders_created)\{host:(?P<host>h\d+)\}")


def by_host(summary: dict) -> dict[str, dict[str, int]]:
    """{"h1": {"requests": ..., "orders": ...}} from a run over several hosts; empty otherwise."""
    found: dict[str, dict[str, int]] = {}
    for name, metric in summary["metrics"].items():
        if match := _HOST_METRIC.fullmatch(name):
            key = "requests" if match["metric"] == "http_reqs" else "orders"
            found.setdefault(match["host"], {"requests": 0, "orders": 0})[key] = int(metric.get("count", 0))
    return dict(sorted(found.items(), key=lambda item: int(item[0][1:])))


def figures(*, scenario: str, summary: dict, series: TimeSeries) -> Figures:
    """Combine k6's summary (whole-run figures) with the time series (peak and answers).

    Failure rate is the share of answers the scenario does not accept (the `unexpected_answers`
    rate: a sellout's 409 OUT_OF_STOCK is accepted), k6's http_req_failed rate is kept beside it.
    """
    metrics = summary["metrics"]
    reqs = metrics.get("http_reqs", {"count": 0, "rate": 0.0})
    duration = metrics.get("http_req_duration", {})
    http_failed = metrics.get("http_req_failed", {}).get("value", 0.0)
    failure = metrics.get("unexpected_answers", {}).get("value", http_failed)
    orders = metrics.get("orders_created", {"count": 0, "rate": 0.0})
    return Figures(
        scenario=scenario,
        requests=int(reqs["count"]),
        success_rate=1.0 - failure if reqs["count"] else 0.0,
        failure_rate=failure,
        http_req_failed_rate=http_failed,
        latency_ms={key: duration.get(key, 0.0) for key in ("avg", "min", "med", "max", "p(90)", "p(95)", "p(99)")},
        rps=reqs["rate"],
        rps_at_peak=series.throughput_at_peak(),
        peak_vus=series.peak_vus,
        orders_created=int(orders["count"]),
        orders_per_s=orders["rate"],
        statuses=series.statuses,
        errors_by_code=series.errors_by_code,
        thresholds=thresholds(summary),
        by_host=by_host(summary),
    )
