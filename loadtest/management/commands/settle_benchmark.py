from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from loadtest import server, settle_benchmark
from loadtest.own_data import restart_with_own_data
from loadtest.runner import REPORTS_DIR


class Command(BaseCommand):
    help = (
        "For each batch size, on freshly reseeded data: place N orders PENDING_PAYMENT through the order "
        "service, then run ONE settler (settle_payments --until-empty) and measure orders settled per second "
        "and the settler's and PostgreSQL's CPU per order. Prints a markdown table and writes it to "
        "loadtest/reports/<timestamp>-settle-benchmark.md. Reseeds the load test's own database and Redis db "
        "(as `manage.py loadtest` does), never what `make run` serves."
    )

    def run_from_argv(self, argv):
        restart_with_own_data()
        super().run_from_argv(argv)

    def add_arguments(self, parser):
        parser.add_argument(
            "--orders",
            type=int,
            default=settle_benchmark.DEFAULT_ORDERS,
            help=f"orders per batch size (default {settle_benchmark.DEFAULT_ORDERS})",
        )
        parser.add_argument(
            "--batch-sizes",
            default=",".join(str(size) for size in settle_benchmark.DEFAULT_BATCH_SIZES),
            help="comma-separated batch sizes, each measured on its own (default %(default)s)",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=settle_benchmark.SETTLE_TIMEOUT_S,
            help="give up on a settler after this many seconds (default %(default).0f)",
        )
        parser.add_argument("--reports-dir", type=Path, default=REPORTS_DIR, help="where the report goes")

    def handle(self, *args, **options):
        try:
            batch_sizes = settle_benchmark.parse_batch_sizes(options["batch_sizes"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        benchmark = settle_benchmark.BenchmarkOptions(
            orders=options["orders"],
            batch_sizes=batch_sizes,
            reports_dir=options["reports_dir"],
            timeout_s=options["timeout"],
        )
        try:
            report, results = settle_benchmark.run(benchmark, echo=self._echo)
        except KeyboardInterrupt:
            raise CommandError("interrupted: the settler was stopped, no report written", returncode=130) from None
        except (settle_benchmark.BenchmarkFailed, server.ServerFailed) as exc:
            raise CommandError(str(exc)) from exc
        self._echo("")
        self._echo(settle_benchmark.results_table(results))
        self._echo(f"\nreport: {report}")

    def _echo(self, message: str) -> None:
        self.stdout.write(message)
        self.stdout.flush()
