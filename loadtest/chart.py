"""The report's chart: throughput and p50/p95/p99 latency per second, the VU curve behind both,
drawn from k6's own time series (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

from loadtest.results import TimeSeries


def plot(
    path: Path, title: str, series_by_label: dict[str, TimeSeries], *, backlog: list[tuple[int, int]] | None = None
) -> None:
    """Throughput (top) and p50/p95/p99 latency (bottom) per second, with the VU curve behind both;
    with `backlog` (second, orders PENDING_PAYMENT), a third panel shows the settlers' backlog."""
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
