"""A capacity model from a load run's CPU per order: what each process kind costs an order, what
runs out first on one machine, and what serving 1,000 to 100,000 orders/s would take.

The figures are a run's own (its summary.json, `cpu`): CPU milliseconds per order of gunicorn,
the settlers, the periodic jobs, PostgreSQL, Redis and k6, measured while they shared one box.
The model is linear: N times the orders cost N times the CPU of each kind. Two kinds cannot be
spread over more machines by adding processes: one PostgreSQL primary (every order's rows are
written there) and one Redis (every reservation runs on its single thread); their bounds are
the rates at which they would fill a whole machine, or for Redis its one core.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

# (label, key in summary.json's cpu, what scales it)
KINDS = [
    ("web (gunicorn workers)", "request_ms", "web hosts: add processes and machines"),
    ("settlers", "settlement_ms", "settler processes beside the web hosts"),
    ("periodic jobs (Celery worker and beat)", "periodic_ms", "one beat; workers as needed"),
    ("PostgreSQL primary", "postgres_ms", "one primary: cores of one machine, then sharding"),
    ("Redis", "redis_ms", "one thread per Redis: a cluster's masters (issue 23)"),
    ("load generator (k6)", "load_generator_ms", "clients: not part of a deployment"),
]
RATES = (1_000, 10_000, 100_000)
REDIS_BUSY_SHARE = 0.7  # a Redis thread past 70% busy queues its commands: the tail grows
MACHINE_CORES = 64  # the largest PostgreSQL primary one would buy before sharding it


@dataclass(frozen=True)
class Kind:
    label: str
    ms_per_order: float | None
    scales_by: str

    @property
    def orders_per_core_s(self) -> float | None:
        return 1000 / self.ms_per_order if self.ms_per_order else None

    def cores_at(self, rate: float) -> float | None:
        return rate * self.ms_per_order / 1000 if self.ms_per_order is not None else None


@dataclass(frozen=True)
class Model:
    run: str  # which run the figures came from
    orders: int
    orders_per_s: float
    cores: int
    machine_ms: float | None
    kinds: list[Kind]

    def kind(self, key: str) -> Kind:
        label = next(label for label, name, _ in KINDS if name == key)
        return next(k for k in self.kinds if k.label == label)

    @property
    def one_machine_orders_per_s(self) -> float | None:
        """The box's bound at this cost: its cores over every process's CPU per order."""
        return self.cores * 1000 / self.machine_ms if self.machine_ms else None

    @property
    def first_to_run_out(self) -> Kind:
        """On one machine every kind shares the cores: the one that uses most of them."""
        return max((k for k in self.kinds if k.ms_per_order is not None), key=lambda k: k.ms_per_order)


def model_from_summary(summary: dict, *, run: str) -> Model:
    use = summary["cpu"]
    kinds = [Kind(label, use.get(f"{key}_per_order"), scales) for label, key, scales in KINDS]
    return Model(
        run=run,
        orders=use["orders"],
        orders_per_s=summary["figures"]["orders_per_s"],
        cores=int(summary["machine"].get("cores", 0)) or 1,
        machine_ms=use.get("machine_ms_per_order"),
        kinds=kinds,
    )


def load_models(report_dir: Path) -> list[Model]:
    """A run's summary.json, or each run of a comparison's (keys that hold a run)."""
    summary = json.loads((report_dir / "summary.json").read_text())
    if "cpu" in summary or "figures" in summary:
        return [model_from_summary(summary, run=str(report_dir))]
    return [
        model_from_summary(run, run=f"{report_dir}/{key}")
        for key, run in summary.items()
        if isinstance(run, dict) and "figures" in run and "cpu" in run
    ]


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render(model: Model) -> str:
    """The model as markdown: per kind, then one machine, then the rates."""
    lines = [
        f"### From {model.run}",
        "",
        f"{model.orders:,} orders at {model.orders_per_s:,.1f} orders/s on {model.cores} cores.",
        "",
        "| process kind | CPU ms per order | orders/s per core | scales by |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {k.label} | {_fmt(k.ms_per_order)} | {_fmt(k.orders_per_core_s, 0)} | {k.scales_by} |" for k in model.kinds
    ]
    first = model.first_to_run_out
    lines += [
        "",
        f"Whole machine: {_fmt(model.machine_ms)} ms per order, so this box tops out near "
        f"{_fmt(model.one_machine_orders_per_s, 0)} orders/s; the kind that uses most of it is {first.label} "
        f"({_fmt(first.ms_per_order)} ms).",
    ]
    postgres, redis = model.kind("postgres_ms"), model.kind("redis_ms")
    if postgres.orders_per_core_s and redis.orders_per_core_s:
        lines += [
            "",
            f"With the web tier on other hosts, one PostgreSQL primary runs out at about "
            f"{postgres.orders_per_core_s:,.0f} orders/s per core ({postgres.orders_per_core_s * MACHINE_CORES:,.0f} "
            f"on {MACHINE_CORES} cores), and one Redis at about {redis.orders_per_core_s * REDIS_BUSY_SHARE:,.0f} "
            f"orders/s ({REDIS_BUSY_SHARE:.0%} of its one thread).",
        ]
    lines += ["", _rates_table(model)]
    return "\n".join(lines)


def _rates_table(model: Model) -> str:
    web, settlers = model.kind("request_ms"), model.kind("settlement_ms")
    periodic, postgres, redis = model.kind("periodic_ms"), model.kind("postgres_ms"), model.kind("redis_ms")
    header = (
        "| orders/s | web cores | settler cores | periodic-job cores | PostgreSQL cores | Redis threads (masters) |"
    )
    lines = [header, "|---|---|---|---|---|---|"]
    for rate in RATES:
        redis_cores = redis.cores_at(rate)
        masters = math.ceil(round(redis_cores / REDIS_BUSY_SHARE, 6)) if redis_cores else None
        pg = postgres.cores_at(rate)
        pg_text = _fmt(pg, 1) + (" (past one machine: shard)" if pg and pg > MACHINE_CORES else "")
        cells = [f"{rate:,}", _fmt(web.cores_at(rate), 1), _fmt(settlers.cores_at(rate), 1),
                 _fmt(periodic.cores_at(rate), 1), pg_text, _fmt(masters, 0)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
