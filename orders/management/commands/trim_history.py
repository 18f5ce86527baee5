from django.core.management.base import BaseCommand

from kernel.command_args import positive_int, positive_seconds
from kernel.retention import TrimResult
from orders import sales_counter
from orders.retention import TRIMS


class Command(BaseCommand):
    help = "Trim what grows with every order past its retention, in batches (docs/retention.md)."

    def add_arguments(self, parser):
        parser.add_argument("--only", choices=[*TRIMS, "seen-events"], action="append", help="trim only these")
        parser.add_argument("--batch-size", type=positive_int, default=None, help="rows per statement")
        parser.add_argument("--time-budget", type=positive_seconds, default=None, help="seconds per table at most")

    def handle(self, *args, **options):
        only = options["only"] or [*TRIMS, "seen-events"]
        for name, trim in TRIMS.items():
            if name in only:
                result = trim(
                    batch_size=options["batch_size"],
                    time_budget_seconds=options["time_budget"],
                    progress=self._progress,
                )
                self._done(result)
        if "seen-events" in only:
            self.stdout.write(f"sales:seen-events: {sales_counter.seen_events_trim()} deleted")

    def _progress(self, result: TrimResult) -> None:
        self.stdout.write(f"  {result.what}: {result.deleted} deleted in {result.batches} batches so far")

    def _done(self, result: TrimResult) -> None:
        line = f"{result.what}: {result.deleted} deleted in {result.batches} batches"
        if result.finished:
            self.stdout.write(self.style.SUCCESS(line))
        else:
            self.stdout.write(self.style.WARNING(f"{line}; time budget spent, the rest at the next run"))
