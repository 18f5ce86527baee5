"""Write a load run's report: report.md (the seed report's table and more), summary.json, chart.png,
and the server's own metrics over the run: server-metrics.csv and server-metrics.png.

A run's report holds k6's whole-run figures, the thresholds, the answers by status and error
code, the server's counters, the processes that ran and their CPU per order, the invariants
and the machine, and the server's metrics as it measured them (scraped once a second: backlog,
time to PAID, orders and errors per second); an asynchronous run adds its payment figures and
the backlog over time. With a ceiling run beside it, the report shows order throughput as a
share of the framework's ceiling (GET /healthz, same VUs). A comparison report puts two runs
side by side with the ratio of the second to the first: the old and new strategy, or the
synchronous (201) and the asynchronous (202) order path.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from loadtest.async_run import PaymentFigures
from loadtest.chaos import ChaosReport, FaultWindow
from loadtest.chart import plot, plot_server
from loadtest.cpu import CpuUse
from loadtest.invariants import Check
from loadtest.jobs import JobTiming
from loadtest.results import PEAK_SHARE, Figures, TimeSeries
from loadtest.server_metrics import ServerSeries, write_csv


@dataclass
class RunResult:
    scenario: str
    strategy: str
    started_at: str
    duration_scale: float
    base_url: str
    shape: dict[str, int]
    figures: Figures
    series: TimeSeries
    k6_exit_code: int
    invariants: list[Check]
    server_counters: dict[str, int]
    machine: dict[str, str]
    ceiling: Figures | None = None
    ceiling_series: TimeSeries | None = field(default=None, repr=False)
    payments: PaymentFigures | None = None
    processes: dict[str, str] = field(default_factory=dict)  # what ran: gunicorn, settlers
    cpu: CpuUse | None = None
    server_metrics: ServerSeries | None = field(default=None, repr=False)
    jobs: list[JobTiming] | None = None  # the periodic jobs timed on the data the run left
    environment: dict[str, str] = field(default_factory=dict)  # set for every process the run started
    chaos: ChaosReport | None = None  # the chaos scenario's faults and what the answers did

    @property
    def invariants_hold(self) -> bool:
        return all(check.ok for check in self.invariants)

    def to_dict(self) -> dict:
        data = {
            "scenario": self.scenario,
            "strategy": self.strategy,
            "started_at": self.started_at,
            "duration_scale": self.duration_scale,
            "base_url": self.base_url,
            "seed_shape": self.shape,
            "figures": asdict(self.figures),
            "thresholds_passed": self.figures.thresholds_passed,
            "k6_exit_code": self.k6_exit_code,
            "invariants": [asdict(check) for check in self.invariants],
            "invariants_hold": self.invariants_hold,
            "server_counters": self.server_counters,
            "machine": self.machine,
            "processes": self.processes,
        }
        if self.environment:
            data["environment"] = self.environment
        if self.cpu is not None:
            data["cpu"] = self.cpu.as_dict()
        if self.payments is not None:
            data["payments"] = asdict(self.payments)
        if self.server_metrics is not None:
            data["server_metrics"] = self.server_metrics.as_dict()
        if self.jobs is not None:
            data["periodic_jobs"] = [asdict(timing) for timing in self.jobs]
        if self.chaos is not None:
            data["chaos"] = asdict(self.chaos)
        if self.ceiling is not None:
            data["ceiling"] = asdict(self.ceiling)
            data["ratios_to_ceiling"] = _throughput_ratios(self.figures, self.ceiling)
        return data


# --- formatting -------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.1f} ms"


def _pct(value: float) -> str:
    return f"{value * 100:.2f}%"


def _per_s(value: float) -> str:
    return f"{value:.2f}/s"


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def _ratio_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _share_text(value: float | None) -> str:
    return "n/a" if value is None else _pct(value)


# (label, value, format, show a ratio): the rows of every figures table.
ROWS: list[tuple[str, Callable[[Figures], float], Callable[[float], str], bool]] = [
    ("success rate", lambda f: f.success_rate, _pct, False),
    ("failure rate", lambda f: f.failure_rate, _pct, False),
    ("avg latency", lambda f: f.latency_ms["avg"], _ms, True),
    ("max latency", lambda f: f.latency_ms["max"], _ms, False),
    ("p90 latency", lambda f: f.latency_ms["p(90)"], _ms, True),
    ("p95 latency", lambda f: f.latency_ms["p(95)"], _ms, True),
    ("p99 latency", lambda f: f.latency_ms["p(99)"], _ms, True),
    ("throughput, whole run (k6 http_reqs rate)", lambda f: f.rps, lambda v: f"{v:.2f} req/s", True),
    (
        f"throughput at peak VUs (seconds with >= {PEAK_SHARE:.0%} of the peak)",
        lambda f: f.rps_at_peak,
        lambda v: f"{v:.2f} req/s",
        True,
    ),
    ("orders created (201, or 202 when asynchronous)", lambda f: f.orders_created, str, False),
    ("orders per second", lambda f: f.orders_per_s, _per_s, True),
    ("requests", lambda f: f.requests, str, False),
    ("peak VUs", lambda f: f.peak_vus, str, False),
    ("k6 http_req_failed rate", lambda f: f.http_req_failed_rate, _pct, False),
]

THROUGHPUT_ROWS = ("throughput, whole run", "throughput at peak VUs")


def _throughput_ratios(run: Figures, ceiling: Figures) -> dict[str, float | None]:
    return {"rps": ratio(run.rps, ceiling.rps), "rps_at_peak": ratio(run.rps_at_peak, ceiling.rps_at_peak)}


def figures_table(
    columns: dict[str, Figures], *, ratio_label: str = "", ratio_of: tuple[int, int] = (0, 1), throughput_only=False
) -> str:
    """A markdown table, one column per run; with `ratio_label`, a last column with the ratio of
    two runs (`ratio_of`: indexes of numerator and denominator) on the rows where it means something;
    `throughput_only` (share of the ceiling): throughput rows only, as percentages."""
    header = ["metric", *columns] + ([ratio_label] if ratio_label else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    runs = list(columns.values())
    for label, value, fmt, show_ratio in ROWS:
        cells = [label, *(fmt(value(f)) for f in runs)]
        if ratio_label:
            wanted = show_ratio and (not throughput_only or label.startswith(THROUGHPUT_ROWS))
            numerator, denominator = (value(runs[i]) for i in ratio_of)
            shown = _share_text if throughput_only else _ratio_text
            cells.append(shown(ratio(numerator, denominator)) if wanted else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _thresholds_table(columns: dict[str, Figures]) -> str:
    names = sorted({name for f in columns.values() for name in f.thresholds})
    lines = ["| threshold | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for name in names:
        cells = [
            ("passed" if f.thresholds[name] else "**FAILED**") if name in f.thresholds else "-"
            for f in columns.values()
        ]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


_P99_THRESHOLD = "http_req_duration p(99)<"


def closed_loop_wait_ms(f: Figures) -> float | None:
    """Little's law for a closed loop (every VU sends its next request as soon as its last one is
    answered): at the peak, the mean time a request takes is peak VUs / throughput at the peak."""
    return f.peak_vus / f.rps_at_peak * 1000 if f.rps_at_peak and f.peak_vus else None


def _closed_loop_text(name: str, f: Figures) -> str:
    """What the latency threshold asks of throughput at this concurrency, in one sentence."""
    wait = closed_loop_wait_ms(f)
    limits = [float(key.removeprefix(_P99_THRESHOLD)) for key in f.thresholds if key.startswith(_P99_THRESHOLD)]
    if wait is None or not limits:
        return ""
    limit_ms = limits[0]
    return (
        f"{name}{f.peak_vus} VUs without pauses: a request took about {_ms(wait)} on average at the peak "
        f"({f.peak_vus} / {f.rps_at_peak:.1f} req/s, Little's law). A mean under {limit_ms:.0f} ms, which "
        f"p99 < {limit_ms:.0f} ms needs, takes more than {f.peak_vus / (limit_ms / 1000):.0f} req/s at this "
        "concurrency.\n"
    )


def _counts_table(title: str, counts: dict[str, int]) -> str:
    if not counts:
        return f"{title}: none\n"
    rows = "\n".join(f"| {key} | {value} |" for key, value in sorted(counts.items(), key=lambda kv: -kv[1]))
    return f"| {title} | count |\n|---|---|\n{rows}\n"


def _invariants_table(checks: list[Check]) -> str:
    rows = "\n".join(f"| {c.name} | {'held' if c.ok else '**BROKEN**'} | {c.detail} |" for c in checks)
    return f"| invariant | result | detail |\n|---|---|---|\n{rows}\n"


def _bullets(items: dict[str, str]) -> str:
    return "\n".join(f"- {key}: {value}" for key, value in items.items())


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _drained_text(p: PaymentFigures) -> str:
    return "**not drained**" if p.drained_after_s is None else f"{p.drained_after_s:.1f} s"


def _batches_text(p: PaymentFigures) -> str:
    b = p.batches
    if not b.batches:
        return "n/a (no settler log)"
    return f"{b.batches:,} (mean {b.mean_batch:.1f} orders, largest {b.largest:,}; {b.retried:,} retried)"


# (label, value as text): the rows of the asynchronous payment table.
PAYMENT_ROWS: list[tuple[str, Callable[[PaymentFigures], str]]] = [
    ("orders accepted (202)", lambda p: f"{p.orders:,}"),
    ("ended PAID / CANCELLED", lambda p: f"{p.paid:,} / {p.cancelled:,}"),
    ("time from 202 to PAID p50", lambda p: _ms(p.p50_ms)),
    ("time from 202 to PAID p95", lambda p: _ms(p.p95_ms)),
    ("time from 202 to PAID p99", lambda p: _ms(p.p99_ms)),
    ("time from 202 to PAID max", lambda p: _ms(p.max_ms)),
    ("accepted orders PAID within 1 s", lambda p: _pct(p.paid_within_1s)),
    ("backlog (orders PENDING_PAYMENT), max", lambda p: f"{p.max_backlog:,}"),
    ("backlog drained after k6 stopped", _drained_text),
    ("settlement batches (settlers' logs)", _batches_text),
]
PAYMENT_NOTE = (
    "Time to PAID is read from the order events (order.created to order.paid). The backlog is "
    "sampled once a second from k6's start; after k6 stops it is looked at every 0.1 s until empty."
)


def _payments_table(columns: dict[str, PaymentFigures | None]) -> str:
    """One column per run; "-" for a run that paid inside the request."""
    rows = [[label, *(show(p) if p is not None else "-" for p in columns.values())] for label, show in PAYMENT_ROWS]
    return _table(["metric", *columns], rows) + "\n\n" + PAYMENT_NOTE + "\n"


# (label, CpuUse attribute): the rows of the CPU table.
CPU_ROWS = [
    ("request side: gunicorn master and workers", "request_ms"),
    ("settlement side: settlers", "settlement_ms"),
    ("periodic jobs: Celery worker and beat", "periodic_ms"),
    ("PostgreSQL server (both sides)", "postgres_ms"),
    ("Redis servers (both sides; every node of a cluster)", "redis_ms"),
    ("all of these", "total_ms"),
    ("load generator: k6", "load_generator_ms"),
    ("whole machine: every process, k6 and anything else included", "machine_ms"),
]
CPU_NOTE = (
    "CPU is user + system time from /proc/<pid>/stat of each process tree (reaped children "
    "included), from the start of the scenario's k6 run (servers started and idle) to k6's end "
    "for gunicorn, and to the drained backlog for the settlers, the periodic jobs, PostgreSQL, Redis and the "
    "whole machine (from /proc/stat: user, nice, system, irq and softirq time), divided by the orders "
    "answered 201/202; k6's is its own rusage over its run. PostgreSQL's and Redis's include the runner's "
    "own sampling queries, and gunicorn's and PostgreSQL's its scrape of `/metrics` once a second. "
    '"-": not measured (no such process in the run, or the server is not on this machine).'
)


def _cpu_per_order(use: CpuUse | None, name: str) -> float | None:
    return use.per_order(getattr(use, name)) if use is not None else None


def _cpu_ratios(first: CpuUse | None, second: CpuUse | None) -> dict[str, float | None]:
    """Second over first, per CPU row both runs measured."""
    found = {}
    for label, name in CPU_ROWS:
        denominator, numerator = _cpu_per_order(first, name), _cpu_per_order(second, name)
        if denominator is not None and numerator is not None:
            found[label] = ratio(numerator, denominator)
    return found


def _cpu_table(columns: dict[str, CpuUse | None], *, ratio_label: str = "") -> str:
    """CPU ms per order by side, one column per run; with `ratio_label`, the second over the first."""
    uses = list(columns.values())
    ratios = _cpu_ratios(*uses[:2]) if ratio_label else {}
    rows = [["orders", *(f"{u.orders:,}" if u else "-" for u in uses)] + ([""] if ratio_label else [])]
    for label, name in CPU_ROWS:
        cells = [label, *("-" if v is None else f"{v:.2f}" for v in (_cpu_per_order(u, name) for u in uses))]
        if ratio_label:
            cells.append(_ratio_text(ratios[label]) if label in ratios else "")
        rows.append(cells)
    header = ["CPU ms per order", *columns] + ([ratio_label] if ratio_label else [])
    return _table(header, rows) + "\n\n" + CPU_NOTE + "\n"


def _seconds(value: float | None) -> str:
    return "-" if value is None else _ms(value * 1000)


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _scrapes_text(m: ServerSeries) -> str:
    took = "" if m.scrape_ms_mean is None else f"; {m.scrape_ms_mean:.0f} ms each on average, {m.scrape_ms_max:.0f} max"
    return f"{m.scrapes:,} / {m.failed:,}{took}"


# (label, value as text): the rows of the server metrics table.
SERVER_ROWS: list[tuple[str, Callable[[ServerSeries], str]]] = [
    ("peak backlog (shop_payment_backlog_orders)", lambda m: _count(m.peak_backlog)),
    ("max oldest-unpaid age (shop_payment_backlog_oldest_seconds)", lambda m: _seconds(m.max_oldest_unpaid_s)),
    ("orders paid / accepted (shop_orders_total)", lambda m: f"{_count(m.total('orders_per_s', 'paid'))} / "
                                                            f"{_count(m.total('orders_per_s', 'accepted'))}"),
    ("error answers (shop_api_errors_total)", lambda m: _count(sum(m.total("errors_per_s", c)
                                                                    for c in m.keys("errors_per_s")))),
    ("orders paid by a settler (time to PAID observed)", lambda m: _count(m.paid_async)),
    ("time to PAID p50, whole run (histogram)", lambda m: _seconds(m.time_to_paid_p50_s)),
    ("time to PAID p95, whole run (histogram)", lambda m: _seconds(m.time_to_paid_p95_s)),
    ("scrapes done / failed", _scrapes_text),
]  # fmt: skip
SERVER_NOTE = (
    "Read from the server's `/metrics`, scraped once a second from just before k6 started to its end "
    "(for `async`, to the drained backlog). Percentiles of time to PAID are `histogram_quantile` over "
    "the buckets' increase (0.05 0.1 0.25 0.5 1 2 5 10 30 60 300 s): as coarse as the buckets. Per second "
    "in `server-metrics.csv`. "
    '"-": not measured (no order paid by a settler, or the gauge was never read).'
)


def _server_table(columns: dict[str, ServerSeries | None]) -> str:
    rows = [[label, *(show(m) if m is not None else "-" for m in columns.values())] for label, show in SERVER_ROWS]
    return _table(["server metric", *columns], rows) + "\n\n" + SERVER_NOTE + "\n"


def _backlog(payments: PaymentFigures | None) -> list[tuple[int, int]] | None:
    return [(s.second, s.backlog) for s in payments.backlog] if payments else None


# --- reports ----------------------------------------------------------------------------


_JOBS_HOW = (
    "Each job run once on the data the run left, after the invariants were checked: reconciliation "
    "and expiry as beat runs them every minute, each hourly trim to the end of its backlog with no "
    "time budget (first run), then once more (next run: the cost of an hourly run once caught up)."
)


def _jobs_table(columns: dict[str, list[JobTiming] | None]) -> str:
    names = list(dict.fromkeys(t.job for timings in columns.values() for t in timings or []))
    by_column = {label: {t.job: t for t in timings or []} for label, timings in columns.items()}
    rows = []
    for name in names:
        cells = [by_column[label].get(name) for label in columns]
        rows.append([name, *(f"{t.seconds:.2f} s ({t.outcome})" if t else "-" for t in cells)])
    return f"{_JOBS_HOW}\n\n" + _table(["job", *columns], rows)


def render_run(result: RunResult) -> str:
    """One run's report.md: what ran and its verdict, its figures, then each thing it measured."""
    parts = [
        *_run_heading(result),
        *_run_result(result),
        *_thresholds_section({"result": result.figures}, name_runs=False),
        *_answers_and_payment(result),
        *_faults_section(result.chaos),
        *_processes_and_cpu(result),
        *_jobs_on_this_run(result),
        *_counters_and_invariants(result),
        *_machine_and_chart(result.machine, "throughput and latency over time"),
        *_server_metrics_over_time(result),
        _files_line(result),
    ]
    return "\n".join(parts)


def _run_heading(result: RunResult) -> list[str]:
    """The title, what the run was made against (seed shape, scale, peak VUs) and its verdict:
    thresholds and invariants, each failed when any one of them is."""
    f = result.figures
    shape = ", ".join(f"{key} {value}" for key, value in result.shape.items())
    verdict = "held" if result.invariants_hold else "**BROKEN**"
    return [
        f"# Load test: {result.scenario}, {result.strategy} strategy\n",
        f"Started {result.started_at} against {result.base_url}; duration scale {result.duration_scale}; "
        f"peak {f.peak_vus} VUs; seed: {shape}.\n",
        f"Thresholds {'passed' if f.thresholds_passed else '**FAILED**'}; invariants {verdict}.\n",
    ]


def _run_result(result: RunResult) -> list[str]:
    """The run's figures; beside a ceiling run, the ceiling's too, with throughput as a share of it."""
    if result.ceiling is None:
        return ["## Result\n", figures_table({"value": result.figures})]
    return [
        "## Result\n",
        figures_table(
            {result.scenario: result.figures, "ceiling (GET /healthz)": result.ceiling},
            ratio_label=f"{result.scenario} / ceiling",
            throughput_only=True,
        ),
        "\nThe ceiling run sends GET /healthz with the same VU profile to the same server: what the "
        "framework and gunicorn serve when the order path costs nothing.",
    ]


def _thresholds_section(columns: dict[str, Figures], *, name_runs: bool) -> list[str]:
    """Each threshold passed or failed per run, then what the p99 threshold asks of throughput
    at the run's concurrency; with `name_runs`, each run's sentence starts with its column's name."""
    return [
        "\n## Thresholds\n",
        _thresholds_table(columns),
        "",
        *(_closed_loop_text(f"{name}: " if name_runs else "", f) for name, f in columns.items()),
    ]


def _answers_and_payment(result: RunResult) -> list[str]:
    """The answers by HTTP status and error code; an asynchronous run's payment figures; in a
    sellout, why its 409s are not failures."""
    f = result.figures
    parts = [
        "\n## Answers\n",
        _counts_table("HTTP status", f.statuses),
        _counts_table("error code", f.errors_by_code),
    ]
    if result.payments is not None:
        parts += ["## Asynchronous payment\n", _payments_table({"value": result.payments})]
    if result.scenario == "sellout":
        parts.append("In a sellout, 409 OUT_OF_STOCK is an expected answer: not counted as a failure.\n")
    return parts


def _faults_section(report: ChaosReport | None) -> list[str]:
    """The chaos scenario: per fault, its window of failed answers (no answer or 5xx), the time
    to the first success after it, and what was answered meanwhile; the careful clients' last answers."""
    if report is None:
        return []

    def span(w: FaultWindow) -> str:
        return "none" if w.errors_from_s is None else f"{w.errors_from_s:.1f}-{w.errors_to_s:.1f} s"

    def counts(by_status: dict[str, int]) -> str:
        return ", ".join(f"{'no answer' if s == '0' else s} x{n}" for s, n in by_status.items()) or "none"

    rows = [
        [w.name, f"{w.started_s:.1f}-{w.ended_s:.1f} s", span(w), _seconds(w.recovered_after_s), counts(w.answers),
         w.detail]
        for w in report.windows
    ]  # fmt: skip
    return [
        f"## Faults ({report.orders} orders; schedule {report.schedule})\n",
        _table(
            [
                "fault",
                "injected (s of the run)",
                "failed answers",
                "recovered after",
                "answered meanwhile",
                "what was done",
            ],
            rows,
        ),
        "",
        f"Careful clients' last answer per order: {counts(report.final_answers)}. Restarted by the supervisor: "
        f"{', '.join(f'{name} x{n}' for name, n in report.restarts.items()) or 'none'}."
        + (f" Not injected: {', '.join(report.not_injected)}." if report.not_injected else "")
        + f" Reservations abandoned during the faults, given back by reconciliation after the run: {report.given_back}."
        + " See docs/chaos.md for how to read this.\n",
    ]


def _processes_and_cpu(result: RunResult) -> list[str]:
    """What ran, and the CPU each side used per order where it was measured."""
    parts = ["## Processes and CPU per order\n", _bullets(result.processes), ""]
    if result.figures.by_host:
        parts += [_by_host_table(result.figures), ""]
    if result.cpu is not None:
        parts.append(_cpu_table({"value": result.cpu}))
    return parts


def _by_host_table(f: Figures) -> str:
    """What each host served (--hosts), as k6 counted it by its requests' host tag."""
    rows = [[host, f"{n['requests']:,}", f"{n['orders']:,}"] for host, n in f.by_host.items()]
    return _table(["host", "requests", "orders (201/202)"], rows)


def _jobs_on_this_run(result: RunResult) -> list[str]:
    """The periodic jobs' times on the data the run left, when they were timed."""
    if result.jobs is None:
        return []
    return ["## Periodic jobs on this run's data\n", _jobs_table({"time (outcome)": result.jobs}), ""]


def _counters_and_invariants(result: RunResult) -> list[str]:
    """What the server counted during the run, and whether every invariant held after it."""
    return [
        "## Server counters\n",
        _counts_table("counter (server /metrics, this run)", result.server_counters),
        "## Invariants\n",
        _invariants_table(result.invariants),
    ]


def _machine_and_chart(machine: dict[str, str], chart_alt: str) -> list[str]:
    """The machine the run (a comparison: its last run) was made on, and the chart over time."""
    return ["## Machine\n", _bullets(machine), "\n## Over time\n", f"![{chart_alt}](chart.png)\n"]


def _server_metrics_over_time(result: RunResult) -> list[str]:
    """The server's own metrics over the run and their chart, when /metrics was scraped."""
    if result.server_metrics is None:
        return []
    return [
        "## Server metrics over time\n",
        _server_table({"value": result.server_metrics}),
        "![server metrics beside k6's throughput and latency](server-metrics.png)\n",
    ]


def _files_line(result: RunResult) -> str:
    """The files beside report.md: the settlers' logs only when settlers paid, the server
    metrics' CSV only when /metrics was scraped."""
    return (
        "Files: `k6-summary.json` (k6 --summary-export), `k6-timeseries.csv.gz` (k6 --out csv), "
        f"`gunicorn.log`,{' `settler-<n>.log`,' if result.payments else ''}"
        f"{' `server-metrics.csv` (the server metrics per interval),' if result.server_metrics else ''} "
        "`summary.json` (the figures above).\n"
    )


@dataclass(frozen=True)
class Comparison:
    """Two runs side by side, the ratio column the second over the first."""

    heading: str
    how: str  # how the two runs were made comparable
    runs: dict[str, RunResult]  # each run's report folder -> its result; the ratio's denominator first
    labels: dict[str, str]  # report folder -> column label

    @property
    def columns(self) -> dict[str, RunResult]:
        return {self.labels[key]: run for key, run in self.runs.items()}

    @property
    def ratio_label(self) -> str:
        first, second = self.runs
        return f"{second} / {first}"

    @property
    def ratios_key(self) -> str:
        first, second = self.runs
        return f"ratios_{second}_over_{first}"


def strategy_comparison(old: RunResult, new: RunResult) -> Comparison:
    return Comparison(
        heading=f"{new.scenario}, old vs new strategy",
        how=f"Both runs on identical fresh data (reseeded before each), same server configuration; "
        f"duration scale {new.duration_scale}. Old first, then new.",
        runs={"old": old, "new": new},
        labels={"old": "old", "new": "new"},
    )


def async_comparison(sync: RunResult, asynchronous: RunResult) -> Comparison:
    return Comparison(
        heading=f"sync (201) vs async (202) orders, {asynchronous.strategy} strategy",
        how=f"The `{sync.scenario}` scenario (paid inside the request, 201), then the `async` scenario "
        "(`Prefer: respond-async`: 202, paid by the settlers), the same VU profile on identical fresh data "
        f"(reseeded before each), {asynchronous.strategy} strategy both; duration scale "
        f"{asynchronous.duration_scale}. Sync first, then async.",
        runs={"sync": sync, "async": asynchronous},
        labels={"sync": "sync (201)", "async": "async (202)"},
    )


def environment_text(environment: dict[str, str]) -> str:
    return ", ".join(f"{name}={value}" for name, value in environment.items()) or "as configured"


def environment_comparison(baseline: RunResult, candidate: RunResult) -> Comparison:
    return Comparison(
        heading=f"{candidate.scenario}, {environment_text(baseline.environment)} vs "
        f"{environment_text(candidate.environment)}",
        how=f"The `{candidate.scenario}` scenario twice on identical fresh data (reseeded before each), "
        f"{candidate.strategy} strategy both, each run's processes (gunicorn, settlers, periodic jobs) started "
        f"with its own environment: the baseline `{environment_text(baseline.environment)}`, then the "
        f"candidate `{environment_text(candidate.environment)}`; duration scale {candidate.duration_scale}. "
        "The baseline first.",
        runs={"baseline": baseline, "candidate": candidate},
        labels={
            "baseline": environment_text(baseline.environment),
            "candidate": environment_text(candidate.environment),
        },
    )


def hosts_comparison(fewer: RunResult, more: RunResult) -> Comparison:
    """--hosts 1,2: the same scenario on one count of hosts (network namespaces), then the other."""
    first, second = (len(run.figures.by_host) or 1 for run in (fewer, more))
    return Comparison(
        heading=f"{fewer.scenario}, {first} host(s) vs {second} host(s)",
        how=f"The `{more.scenario}` scenario on {first} then {second} web host(s), each a network namespace with "
        "its own gunicorn and settler(s), on the one PostgreSQL and Redis (loadtest/hosts.py), k6 spreading its "
        f"VUs over the hosts; identical fresh data (reseeded before each), {more.strategy} strategy both; "
        f"duration scale {more.duration_scale}. All of it on this one machine: the hosts share its cores with "
        "PostgreSQL, Redis and k6, so this shows what another host costs (more processes, more connections, "
        "CPU per order), not the speed-up separate machines would give.",
        runs={f"hosts-{first}": fewer, f"hosts-{second}": more},
        labels={f"hosts-{first}": f"{first} host(s)", f"hosts-{second}": f"{second} host(s)"},
    )


def _shape_text(shape: dict) -> str:
    return f"{shape['users']:,} users, {shape['products']:,} products, {shape.get('orders', 0):,} past orders"


def shape_comparison(scenario_shape: RunResult, given: RunResult) -> Comparison:
    return Comparison(
        heading=f"{given.scenario}, {_shape_text(scenario_shape.shape)} vs {_shape_text(given.shape)}",
        how=f"The `{given.scenario}` scenario with its own seed shape, then with the given one (each seeded "
        f"fresh before its run, past orders included), {given.strategy} strategy both, same server "
        f"configuration; duration scale {given.duration_scale}. The scenario's shape first.",
        runs={"scenario-shape": scenario_shape, "given-shape": given},
        labels={"scenario-shape": _shape_text(scenario_shape.shape), "given-shape": _shape_text(given.shape)},
    )


def render_comparison(comparison: Comparison) -> str:
    """Two runs' report.md side by side: the figures with the ratio of the second to the first,
    the sections some run measured, the thresholds, each run's answers and checks in turn."""
    runs = comparison.columns
    parts = [
        *_comparison_result(comparison),
        *_ceiling_shares(runs),
        *_measured_sections(comparison),
        *_thresholds_section({label: run.figures for label, run in runs.items()}, name_runs=True),
        *_each_run_in_turn(runs),
        *_machine_and_chart(list(runs.values())[-1].machine, f"{' and '.join(runs)} over time"),
    ]
    return "\n".join(parts)


def _comparison_result(comparison: Comparison) -> list[str]:
    """The title, how the runs were made comparable with a link to each one's own report, and the
    figures side by side with the second over the first."""
    columns = {label: run.figures for label, run in comparison.columns.items()}
    links = ", ".join(f"[{key}]({key}/report.md)" for key in comparison.runs)
    return [
        f"# Load test: {comparison.heading}\n",
        f"{comparison.how} Full reports: {links}.\n",
        "## Result\n",
        figures_table(columns, ratio_label=comparison.ratio_label, ratio_of=(1, 0)),
    ]


def _ceiling_shares(runs: dict[str, RunResult]) -> list[str]:
    """The ceiling is measured once, beside the first run that has one: its figures, then each
    run's throughput as a share of it."""
    ceiling = next((run.ceiling for run in runs.values() if run.ceiling is not None), None)
    if ceiling is None:
        return []
    parts = [
        "\n## Framework ceiling (GET /healthz, same VU profile)\n",
        figures_table({"ceiling": ceiling}),
        "",
        f"| share of the ceiling | {' | '.join(runs)} |\n|---|{'---|' * len(runs)}",
    ]
    for key, label in (("rps", "throughput, whole run"), ("rps_at_peak", "throughput at peak VUs")):
        shares = (_share_text(_throughput_ratios(run.figures, ceiling)[key]) for run in runs.values())
        parts.append(f"| {label} | {' | '.join(shares)} |")
    return parts


def _measured(runs: dict[str, RunResult], name: str) -> dict | None:
    """Each run's `name` (payments, cpu, ...) by column label; None when no run measured it."""
    found = {label: getattr(run, name) for label, run in runs.items()}
    return found if any(value is not None for value in found.values()) else None


def _measured_sections(comparison: Comparison) -> list[str]:
    """A section for each thing at least one run measured (asynchronous payment, server metrics,
    periodic jobs, CPU per order), "-" in the columns of the runs that did not."""
    runs, parts = comparison.columns, []
    if (payments := _measured(runs, "payments")) is not None:
        parts += ["\n## Asynchronous payment\n", _payments_table(payments)]
    if (server := _measured(runs, "server_metrics")) is not None:
        parts += [
            "\n## Server metrics\n",
            _server_table(server),
            f"Over time: {', '.join(f'[{key}]({key}/server-metrics.png)' for key in comparison.runs)}.\n",
        ]
    if (timings := _measured(runs, "jobs")) is not None:
        parts += ["\n## Periodic jobs on each run's data\n", _jobs_table(timings)]
    if (use := _measured(runs, "cpu")) is not None:
        parts += ["\n## CPU per order\n", _cpu_table(use, ratio_label=comparison.ratio_label)]
    return parts


def _processes_text(run: RunResult) -> str:
    """What ran, and with --hosts what each host served."""
    return _bullets(run.processes) + "\n" + (_by_host_table(run.figures) + "\n" if run.figures.by_host else "")


def _each_run_in_turn(runs: dict[str, RunResult]) -> list[str]:
    """What is not figures (error codes, processes, counters, invariants): one section each, and
    in it each run in turn under its label."""
    per_run = [
        ("Errors by code", lambda run: _counts_table("error code", run.figures.errors_by_code)),
        ("Processes", _processes_text),
        ("Server counters", lambda run: _counts_table("counter", run.server_counters)),
        ("Invariants", lambda run: _invariants_table(run.invariants)),
    ]
    parts = []
    for title, section in per_run:
        parts.append(f"\n## {title}\n" if title == per_run[0][0] else f"## {title}\n")
        for label, run in runs.items():
            parts += [f"**{label}**\n", section(run)]
    return parts


def write_run_report(out_dir: Path, result: RunResult) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(result.to_dict(), indent=2))
    series = {result.scenario: result.series}
    if result.ceiling_series is not None:
        series["ceiling"] = result.ceiling_series
    title = f"{result.scenario}, {result.strategy} strategy"
    faults = [(w.name, w.started_s, w.ended_s) for w in result.chaos.windows] if result.chaos else None
    plot(out_dir / "chart.png", title, series, backlog=_backlog(result.payments), faults=faults)
    if result.server_metrics is not None:
        write_csv(out_dir / "server-metrics.csv", result.server_metrics)
        plot_server(out_dir / "server-metrics.png", f"{title}: the server's /metrics", result.series,
                    result.server_metrics)  # fmt: skip
    (out_dir / "report.md").write_text(render_run(result))


def write_comparison_report(out_dir: Path, comparison: Comparison) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    first, second = comparison.runs.values()
    ratios = {label: ratio(value(second.figures), value(first.figures)) for label, value, _fmt, show in ROWS if show}
    ratios |= {f"CPU ms per order, {label}": value for label, value in _cpu_ratios(first.cpu, second.cpu).items()}
    summary = {key: run.to_dict() for key, run in comparison.runs.items()} | {comparison.ratios_key: ratios}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    backlog = next((_backlog(run.payments) for run in comparison.runs.values() if run.payments), None)
    series = {label: run.series for label, run in comparison.columns.items()}
    plot(out_dir / "chart.png", comparison.heading, series, backlog=backlog)
    (out_dir / "report.md").write_text(render_comparison(comparison))
