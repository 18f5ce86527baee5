import argparse
import re
from dataclasses import replace
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from loadtest import runner, server
from loadtest.async_run import PaymentFigures
from loadtest.cpu import CpuUse
from loadtest.own_data import restart_with_own_data


class Command(BaseCommand):
    help = (
        "Reseed, start gunicorn, run a k6 scenario, check the invariants and write a report to "
        "loadtest/reports/<timestamp>-<scenario>/. Fails when an invariant is broken. The run's data lives "
        "apart from what `make run` serves: database <configured name>_loadtest (LOADTEST_DATABASE_NAME; "
        "created and migrated if missing), Redis logical db 14 (REDIS_LOADTEST_URL), tokens in "
        ".data/loadtest-tokens.json (LOADTEST_RUN_TOKENS_PATH). With --url it reseeds that server's data "
        "(DATABASE_URL, REDIS_URL) instead, and only with --reseed."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--scenario",
            choices=list(runner.SCENARIOS),
            default="load",
            help="load and spike are the seed report's profiles (default load)",
        )
        parser.add_argument(
            "--strategy",
            choices=runner.STRATEGIES,
            help="ORDER_STRATEGY of the server this command starts (default new; not with --url)",
        )
        parser.add_argument(
            "--compare",
            action="store_true",
            help="run two runs on identical fresh data and write one side-by-side report: the old then the new "
            "strategy; with --scenario async, the synchronous load scenario (201) then async (202), both with "
            "--strategy (default new)",
        )
        parser.add_argument(
            "--compare-env",
            type=environment_overrides,
            metavar="NAME=VALUE[,NAME=VALUE...]",
            help="run the scenario twice on identical fresh data and write one side-by-side report: first with "
            "--baseline-env (default: the environment as configured), then with these variables set for every "
            "process the run starts (gunicorn, settlers, periodic jobs), e.g. "
            "GUNICORN_WORKER_CLASS=gthread,GUNICORN_WORKERS=6 or ORDER_ASYNC_INTAKE=redis; REDIS_APPENDFSYNC is "
            "given to the running Redis instead (CONFIG SET appendfsync, put back after the run)",
        )
        parser.add_argument(
            "--baseline-env",
            type=environment_overrides,
            default=(),
            metavar="NAME=VALUE[,NAME=VALUE...]",
            help="with --compare-env: the first run's variables (default none: as configured)",
        )
        parser.add_argument(
            "--settlers",
            type=int,
            help="settler processes (manage.py settle_payments) beside gunicorn, with --hosts on each host "
            "(default 1; they pay the async scenario's orders)",
        )
        parser.add_argument(
            "--hosts",
            type=_host_counts,
            default=(),
            help="run N web hosts, each a Linux network namespace (needs root and `ip`) with its own gunicorn and "
            "--settlers settler(s), on the one PostgreSQL and Redis (restarted to listen on the namespaces' bridge "
            "too, and back at the end); k6 spreads its VUs over them. Two counts (--hosts 1,2) make two runs and a "
            "side-by-side report: throughput and CPU per order. On one machine that shows what a host costs, not "
            "a speed-up",
        )
        parser.add_argument(
            "--with-ceiling",
            action="store_true",
            help="first measure GET /healthz with the same VU profile; report the ratio",
        )
        parser.add_argument(
            "--duration-scale",
            type=float,
            default=1.0,
            help="multiplies every stage duration (0.1: a 4-minute load test in 24 s)",
        )
        parser.add_argument(
            "--url",
            help="test this running server instead of starting gunicorn; it must use this command's "
            "DATABASE_URL and REDIS_URL, which are reseeded (refused without --reseed)",
        )
        parser.add_argument(
            "--reseed",
            action="store_true",
            help="with --url: go ahead and replace that deployment's customers, products, orders and stock. "
            "Not without --url (an error): a run of its own always reseeds its own database",
        )
        shape = parser.add_argument_group(
            "seed shape (default: the scenario's, the seed report's 500 users, 5 products)"
        )
        shape.add_argument("--users", type=int, help="customers 1..N")
        shape.add_argument("--products", type=int, help="products 1..N")
        shape.add_argument("--stock", type=int, help="units per product (default 1,000,000)")
        shape.add_argument("--orders", type=int, help="past orders to seed before the run (default 0)")
        shape.add_argument("--history-days", type=float, help="the past orders span (default 30)")
        parser.add_argument(
            "--compare-shapes",
            action="store_true",
            help="run the scenario with its own shape, then with the one --users/--products/--orders give, "
            "and write one side-by-side report",
        )
        parser.add_argument(
            "--time-jobs",
            action="store_true",
            help="after each run, time the periodic jobs (reconciliation, expiry, the retention trims) on its data",
        )
        chaos = parser.add_argument_group("--scenario chaos (docs/chaos.md)")
        chaos.add_argument(
            "--faults",
            help="the fault schedule, times since k6 started: e.g. redis-kill@20s,pg-stop@40s+10s,"
            "web-worker-kill@60s,settler-kill@70s,celery-kill@80s, and with --hosts 2 host-kill@90s (a whole "
            "host killed and started again) (default: five faults spread over the run, six with --hosts 2, "
            "their times scaled by --duration-scale; a pg-stop lasts 10 s)",
        )
        chaos.add_argument(
            "--chaos-orders",
            choices=runner.CHAOS_ORDERS,
            default="async",
            help="the careful clients' orders: async (202, Prefer: respond-async; default), sync (201) or both",
        )
        chaos.add_argument(
            "--no-idempotency-key",
            action="store_true",
            help="the careful clients send no Idempotency-Key: asynchronous orders take Redis' intake path "
            "(issue 21: 202s while PostgreSQL is stopped); only 503s are retried then",
        )
        parser.add_argument("--vus", type=int, help="peak VUs (default 100; smoke 5)")
        parser.add_argument("--port", type=int, default=8089, help="port of the started gunicorn (default 8089)")
        parser.add_argument("--reports-dir", type=Path, default=runner.REPORTS_DIR, help="where reports go")
        parser.add_argument(
            "--fail-on-thresholds",
            action="store_true",
            help="also fail when a k6 threshold (p99 < 200 ms, failures < 1%%) fails",
        )

    def run_from_argv(self, argv):
        # Decided after argparse has read --url, which keeps the configured data (that server's).
        options = self.create_parser(argv[0], argv[1]).parse_args(argv[2:])
        if not options.url:
            restart_with_own_data()
        super().run_from_argv(argv)

    def handle(self, *args, **options):
        if options["baseline_env"] and options["compare_env"] is None:
            raise CommandError("--baseline-env goes with --compare-env (the run it is the baseline of)")
        given = {
            key: options[key]
            for key in ("users", "products", "stock", "orders", "history_days")
            if options[key] is not None
        }
        scenario_shape = runner.SCENARIOS[options["scenario"]].shape
        run_options = runner.RunOptions(
            scenario=options["scenario"],
            strategy=options["strategy"],
            compare=options["compare"],
            with_ceiling=options["with_ceiling"],
            duration_scale=options["duration_scale"],
            url=options["url"],
            vus=options["vus"],
            port=options["port"],
            reports_dir=options["reports_dir"],
            settlers=options["settlers"],
            shape=replace(scenario_shape, **given) if given else None,
            compare_shapes=options["compare_shapes"],
            time_jobs=options["time_jobs"],
            reseed=options["reseed"],
            compare_environments=(
                (options["baseline_env"], options["compare_env"]) if options["compare_env"] is not None else None
            ),
            hosts=options["hosts"],
            faults=options["faults"],
            chaos_orders=options["chaos_orders"],
            chaos_keys=not options["no_idempotency_key"],
        )
        try:
            out_dir, results = runner.run(run_options, echo=self._echo)
        except KeyboardInterrupt:
            raise CommandError("interrupted: the server was stopped, no report written", returncode=130) from None
        except (runner.RunFailed, server.ServerFailed) as exc:
            raise CommandError(str(exc)) from exc

        for result in results:
            f, name = result.figures, f"{result.scenario} ({result.strategy} strategy)"
            if f.by_host:
                name = f"{result.scenario} ({result.strategy} strategy, {len(f.by_host)} host(s))"
            self._echo(
                f"{name}: {f.requests} requests, {f.rps:.1f} req/s, p95 {f.latency_ms['p(95)']:.1f} ms, "
                f"p99 {f.latency_ms['p(99)']:.1f} ms, failures {f.failure_rate:.2%}, "
                f"thresholds {'passed' if f.thresholds_passed else 'FAILED'}"
            )
            if result.payments is not None:
                self._echo(f"{name}: {_payment_line(result.payments)}")
            if result.cpu is not None:
                self._echo(f"{name}: {_cpu_line(result.cpu)}")
            if f.by_host:
                served = (f"{host} {n['requests']} requests, {n['orders']} orders" for host, n in f.by_host.items())
                self._echo(f"{name}: by host " + ", ".join(served))
        self._echo(f"report folder: {out_dir}")
        broken = [
            f"{r.scenario} ({r.strategy} strategy): {c.name}: {c.detail}"
            for r in results
            for c in r.invariants
            if not c.ok
        ]
        if broken:
            raise CommandError("INVARIANTS BROKEN (report written):\n  " + "\n  ".join(broken))
        if options["fail_on_thresholds"] and not all(r.figures.thresholds_passed for r in results):
            raise CommandError("k6 thresholds failed (report written)")
        self.stdout.write(self.style.SUCCESS("invariants held"))

    def _echo(self, message: str) -> None:
        self.stdout.write(message)
        self.stdout.flush()


def environment_overrides(text: str) -> tuple[tuple[str, str], ...]:
    """`NAME=VALUE,NAME=VALUE` as pairs; argparse turns the ValueError into a usage error."""
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, equals, value = item.partition("=")
        if not equals or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", name):
            raise ValueError(f"{item!r} is not NAME=VALUE (an upper-case variable name)")
        pairs.append((name, value))
    if not pairs:
        raise ValueError("no NAME=VALUE given")
    return tuple(pairs)


def _host_counts(value: str) -> tuple[int, ...]:
    """--hosts 2, or 1,2 for a comparison."""
    try:
        return tuple(int(part) for part in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a count of hosts (2) or two to compare (1,2), not {value!r}") from None


def _payment_line(p: PaymentFigures) -> str:
    drained = "not drained" if p.drained_after_s is None else f"drained {p.drained_after_s:.1f} s after k6"
    return (
        f"{p.paid} PAID, {p.cancelled} CANCELLED; time to PAID p50 {p.p50_ms:.0f} ms, p99 {p.p99_ms:.0f} ms, "
        f"{p.paid_within_1s:.1%} within 1 s; backlog max {p.max_backlog}, {drained}"
    )


def _cpu_line(use: CpuUse) -> str:
    sides = {"request": use.request_ms, "settlement": use.settlement_ms, "periodic jobs": use.periodic_ms,
             "PostgreSQL": use.postgres_ms, "Redis": use.redis_ms, "k6": use.load_generator_ms,
             "whole machine": use.machine_ms}  # fmt: skip
    shown = [f"{name} {use.per_order(ms):.2f}" for name, ms in sides.items() if use.per_order(ms) is not None]
    return "CPU ms per order: " + (", ".join(shown) or "not measured")
