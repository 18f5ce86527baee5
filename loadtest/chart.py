"""The report's chart: throughput and p50/p95/p99 latency per second, the VU curve behind both,
drawn from k6's own time series (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

from loadtest.results import TimeSeries
from loadtest.server_metrics import ServerSeries


def plot(
    path: Path,
    title: str,
    series_by_label: dict[str, TimeSeries],
    *,
    backlog: list[tuple[int, int]] | None = None,
    faults: list[tuple[str, float, float]] | None = None,
) -> None:
    """Throughput (top) and p50/p95/p99 latency (bottom) per second, with the VU curve behind both;
    with `backlog` (second, orders PENDING_PAYMENT), a third panel shows the settlers' backlog;
    with `faults` (name, start and end second), each is a red band with its name on every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = 3 if backlog else 2
    fig, axes = plt.subplots(rows, 1, figsize=(11, 7 if rows == 2 else 9.5), sharex=True)
    top, bottom = axes[0], axes[1]
    if backlog:
        waiting = axes[2]
        waiting.plot([second for second, _ in backlog], [n for _, n in backlog], color="C4",
                     label="backlog: orders PENDING_PAYMENT")  # fmt: skip
        waiting.set_ylim(bottom=0)
        waiting.yaxis.set_major_locator(MaxNLocator(integer=True))
        waiting.set_ylabel("orders waiting")
        waiting.set_xlabel("seconds since the start of the run")
        waiting.legend(loc="upper left", fontsize="small")
        waiting.grid(alpha=0.3)
    several = len(series_by_label) > 1
    latencies = []
    for index, (label, series) in enumerate(series_by_label.items()):
        color = f"C{index}"
        x = [b.second for b in series.buckets]
        prefix = f"{label} " if several else ""
        top.plot(x, [b.requests for b in series.buckets], color=color, label=f"{prefix}requests/s")
        if any(b.orders for b in series.buckets):
            top.plot(x, [b.orders for b in series.buckets], color=color, linestyle=":", label=f"{prefix}orders/s")
        for name, style in (("p50", ":"), ("p95", "--"), ("p99", "-")):
            values = [getattr(b, name) for b in series.buckets]
            latencies += [v for v in values if v]
            line_color = color if several else {"p50": "C2", "p95": "C1", "p99": "C3"}[name]
            bottom.plot(x, values, color=line_color, linestyle=style, label=f"{prefix}{name}")
        for axis in (top, bottom):
            vus = axis.twinx()
            vus.plot(x, [b.vus for b in series.buckets], color=color, alpha=0.25, linewidth=3)
            vus.set_ylim(bottom=0)
            vus.set_ylabel("VUs (faint)")
    top.set_ylim(bottom=0)
    top.set_ylabel("per second")
    top.set_title(title)
    top.legend(loc="upper left", fontsize="small")
    if latencies and max(latencies) / max(min(latencies), 0.001) > 100:
        bottom.set_yscale("log")
    bottom.set_ylabel("latency (ms)")
    if not backlog:  # else the backlog panel below carries the time axis
        bottom.set_xlabel("seconds since the start of the run")
    bottom.legend(loc="upper left", fontsize="small")
    for axis in (top, bottom):
        axis.grid(alpha=0.3)
    for name, start, end in faults or []:
        for axis in axes:
            axis.axvspan(start, max(end, start + 0.5), color="red", alpha=0.15)
        top.text(start, 1.0, f" {name}", transform=top.get_xaxis_transform(), rotation=90, va="top", fontsize=7,
                 color="darkred")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_server(path: Path, title: str, k6: TimeSeries, server: ServerSeries) -> None:
    """The server's own metrics (loadtest.server_metrics) on k6's time axis, below k6's figures:
    throughput (k6's requests and orders per second, the server's orders by outcome and errors by
    code), k6's latency, the payment backlog with its oldest order's age, and time to PAID
    (p50/p95 of each interval, from the histogram) with the settlement batches' mean size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rates, latency, backlog, paid) = plt.subplots(4, 1, figsize=(11, 12), sharex=True)
    x = [b.second for b in k6.buckets]
    rates.plot(x, [b.requests for b in k6.buckets], color="C0", label="k6 requests/s")
    rates.plot(x, [b.orders for b in k6.buckets], color="C0", linestyle=":", label="k6 orders/s")
    # Gauges are drawn when they were read (the interval's end); what happened in an interval
    # (rates, time to PAID, batches) at its start, as k6's buckets are drawn at their first second.
    at = [p.second for p in server.points]
    during = [p.second - p.interval_s for p in server.points]
    for index, outcome in enumerate(server.keys("orders_per_s")):
        rates.plot(during, [p.orders_per_s.get(outcome, 0.0) for p in server.points], color=f"C{index + 1}",
                   linestyle="--", marker=".", label=f"server orders/s {outcome}")  # fmt: skip
    for index, code in enumerate(server.keys("errors_per_s")):
        rates.plot(during, [p.errors_per_s.get(code, 0.0) for p in server.points], color=f"C{index + 5}",
                   linewidth=1, label=f"server errors/s {code}")  # fmt: skip
    rates.set_ylim(bottom=0)
    rates.set_ylabel("per second")
    rates.set_title(title)

    latencies = []
    for name, style, color in (("p50", ":", "C2"), ("p95", "--", "C1"), ("p99", "-", "C3")):
        values = [getattr(b, name) for b in k6.buckets]
        latencies += [v for v in values if v]
        latency.plot(x, values, color=color, linestyle=style, label=f"k6 {name}")
    if latencies and max(latencies) / max(min(latencies), 0.001) > 100:
        latency.set_yscale("log")
    latency.set_ylabel("latency (ms)")

    backlog.plot(
        at, [p.backlog for p in server.points], color="C4", marker=".", label="backlog: orders PENDING_PAYMENT"
    )
    backlog.set_ylim(bottom=0)
    backlog.set_ylabel("orders waiting")
    age = backlog.twinx()
    age.plot(at, [p.oldest_unpaid_s for p in server.points], color="C5", linestyle="--", label="oldest unpaid (s)")
    age.set_ylim(bottom=0)
    age.set_ylabel("oldest unpaid (s)")
    age.legend(loc="upper right", fontsize="small")

    for name, style, color in (("p50", ":", "C2"), ("p95", "--", "C1"), ("mean", "-", "C0")):
        values = [getattr(p, f"time_to_paid_{name}_s") for p in server.points]
        paid.plot(during, values, color=color, linestyle=style, marker=".", label=f"time to PAID {name}")
    if not server.paid_async:
        paid.text(0.5, 0.5, "no order paid by a settler in this run", transform=paid.transAxes, ha="center")
    if not server.peak_backlog:
        backlog.text(0.5, 0.5, "no order waited for a settler in this run", transform=backlog.transAxes, ha="center")
    paid.set_ylim(bottom=0)
    paid.set_ylabel("time to PAID (s)")
    size = paid.twinx()
    size.plot(during, [p.batch_size_mean for p in server.points], color="C7", alpha=0.5, label="batch size, mean")
    size.set_ylim(bottom=0)
    size.set_ylabel("orders per batch")
    size.legend(loc="upper right", fontsize="small")
    paid.set_xlabel("seconds since the start of the run (k6's first second)")

    for axis in (rates, latency, backlog, paid):
        axis.legend(loc="upper left", fontsize="small")
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
