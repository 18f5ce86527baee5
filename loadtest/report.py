"""Write a load run's report: report.md (the seed report's table and more), summary.json, chart.png.

A run's report holds k6's whole-run figures, the thresholds, the answers by status and error
code, the server's counters, the invariants and the machine. With a ceiling run beside it, the
report shows order throughput as a share of the framework's ceiling (GET /healthz, same VUs);
a comparison report puts the old and new strategy side by side with new/old ratios.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from loadtest.async_run import PaymentFigures
from loadtest.chart import plot
from loadtest.invariants import Check
from loadtest.results import PEAK_SHARE, Figures, TimeSeries


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
        }
        if self.payments is not None:
            data["payments"] = asdict(self.payments)
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
    ("avg latency", lambda f: f.latency_ms["avg"], _ms, False),
    ("max latency", lambda f: f.latency_ms["max"], _ms, False),
    ("p90 latency", lambda f: f.latency_ms["p(90)"], _ms, False),
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


def _machine_lines(machine: dict[str, str]) -> str:
    return "\n".join(f"- {key}: {value}" for key, value in machine.items())


# --- reports ----------------------------------------------------------------------------


def _payments_table(p: PaymentFigures) -> str:
    drained = f"{p.drained_after_s:.0f} s" if p.drained_after_s >= 0 else "**not drained**"
    rows = [
        ("orders accepted (202)", f"{p.orders:,}"),
        ("ended PAID / CANCELLED", f"{p.paid:,} / {p.cancelled:,}"),
        ("time from 202 to PAID p50", _ms(p.p50_ms)),
        ("time from 202 to PAID p95", _ms(p.p95_ms)),
        ("time from 202 to PAID p99", _ms(p.p99_ms)),
        ("time from 202 to PAID max", _ms(p.max_ms)),
        ("payment queue depth, max", f"{p.max_queue_depth:,}"),
        ("queue drained after k6 stopped", drained),
    ]
    lines = ["| metric | value |", "|---|---|", *[f"| {name} | {value} |" for name, value in rows]]
    return "\n".join(lines) + "\n\nTime to PAID is read from the order events (order.created to order.paid).\n"


def render_run(result: RunResult) -> str:
    f = result.figures
    shape = ", ".join(f"{key} {value}" for key, value in result.shape.items())
    verdict = "held" if result.invariants_hold else "**BROKEN**"
    parts = [
        f"# Load test: {result.scenario}, {result.strategy} strategy\n",
        f"Started {result.started_at} against {result.base_url}; duration scale {result.duration_scale}; "
        f"peak {f.peak_vus} VUs; seed: {shape}.\n",
        f"Thresholds {'passed' if f.thresholds_passed else '**FAILED**'}; invariants {verdict}.\n",
        "## Result\n",
    ]
    if result.ceiling is not None:
        parts.append(
            figures_table(
                {result.scenario: f, "ceiling (GET /healthz)": result.ceiling},
                ratio_label=f"{result.scenario} / ceiling",
                throughput_only=True,
            )
        )
        parts.append(
            "\nThe ceiling run sends GET /healthz with the same VU profile to the same server: what the "
            "framework and gunicorn serve when the order path costs nothing."
        )
    else:
        parts.append(figures_table({"value": f}))
    parts += [
        "\n## Thresholds\n",
        _thresholds_table({"result": f}),
        "",
        _closed_loop_text("", f),
        "\n## Answers\n",
        _counts_table("HTTP status", f.statuses),
        _counts_table("error code", f.errors_by_code),
    ]
    if result.payments is not None:
        parts += ["## Asynchronous payment\n", _payments_table(result.payments)]
    if result.scenario == "sellout":
        parts.append("In a sellout, 409 OUT_OF_STOCK is an expected answer: not counted as a failure.\n")
    parts += [
        "## Server counters\n",
        _counts_table("counter (config.metrics)", result.server_counters),
        "## Invariants\n",
        _invariants_table(result.invariants),
        "## Machine\n",
        _machine_lines(result.machine),
        "\n## Over time\n",
        "![throughput and latency over time](chart.png)\n",
        "Files: `k6-summary.json` (k6 --summary-export), `k6-timeseries.csv.gz` (k6 --out csv), "
        "`gunicorn.log`, `summary.json` (the figures above).\n",
    ]
    return "\n".join(parts)


def render_comparison(old: RunResult, new: RunResult) -> str:
    columns = {"old": old.figures, "new": new.figures}
    parts = [
        f"# Load test: {new.scenario}, old vs new strategy\n",
        f"Both runs on identical fresh data (reseeded before each), same server configuration; "
        f"duration scale {new.duration_scale}. Old first, then new. Full reports: [old](old/report.md), "
        f"[new](new/report.md).\n",
        "## Result\n",
        figures_table(columns, ratio_label="new / old", ratio_of=(1, 0)),
    ]
    ceiling = old.ceiling or new.ceiling
    if ceiling is not None:
        parts += [
            "\n## Framework ceiling (GET /healthz, same VU profile)\n",
            figures_table({"ceiling": ceiling}),
            "",
            "| share of the ceiling | old | new |\n|---|---|---|",
        ]
        for key, label in (("rps", "throughput, whole run"), ("rps_at_peak", "throughput at peak VUs")):
            old_r, new_r = (_throughput_ratios(r.figures, ceiling)[key] for r in (old, new))
            parts.append(f"| {label} | {_share_text(old_r)} | {_share_text(new_r)} |")
    parts += [
        "\n## Thresholds\n",
        _thresholds_table(columns),
        "",
        *(_closed_loop_text(f"{name}: ", f) for name, f in columns.items()),
        "\n## Errors by code\n",
        "**old**\n",
        _counts_table("error code", old.figures.errors_by_code),
        "**new**\n",
        _counts_table("error code", new.figures.errors_by_code),
        "## Server counters\n",
        "**old**\n",
        _counts_table("counter", old.server_counters),
        "**new**\n",
        _counts_table("counter", new.server_counters),
        "## Invariants\n",
        "**old**\n",
        _invariants_table(old.invariants),
        "**new**\n",
        _invariants_table(new.invariants),
        "## Machine\n",
        _machine_lines(new.machine),
        "\n## Over time\n",
        "![old and new over time](chart.png)\n",
    ]
    return "\n".join(parts)


def write_run_report(out_dir: Path, result: RunResult) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(result.to_dict(), indent=2))
    series = {result.scenario: result.series}
    if result.ceiling_series is not None:
        series["ceiling"] = result.ceiling_series
    queue = [(s.second, s.depth) for s in result.payments.queue] if result.payments else None
    plot(out_dir / "chart.png", f"{result.scenario}, {result.strategy} strategy", series, queue=queue)
    (out_dir / "report.md").write_text(render_run(result))


def write_comparison_report(out_dir: Path, old: RunResult, new: RunResult) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    ratios = {
        label: ratio(value(new.figures), value(old.figures)) for label, value, _fmt, show_ratio in ROWS if show_ratio
    }
    summary = {"old": old.to_dict(), "new": new.to_dict(), "ratios_new_over_old": ratios}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(out_dir / "chart.png", f"{new.scenario}: old vs new strategy", {"old": old.series, "new": new.series})
    (out_dir / "report.md").write_text(render_comparison(old, new))
