from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from loadtest import capacity


class Command(BaseCommand):
    help = (
        "Print a capacity model (markdown) from load reports' CPU per order: each process kind's cost and "
        "orders/s per core, what runs out first on one machine, where one PostgreSQL primary and one Redis "
        "run out, and the cores 1,000, 10,000 and 100,000 orders/s would take. Give report folders "
        "(a run's or a comparison's, loadtest/reports/<timestamp>-...)."
    )

    def add_arguments(self, parser):
        parser.add_argument("reports", nargs="+", type=Path, help="report folders holding a summary.json")

    def handle(self, *args, **options):
        for folder in options["reports"]:
            if not (folder / "summary.json").exists():
                raise CommandError(f"{folder} holds no summary.json: give a load report's folder")
            models = capacity.load_models(folder)
            if not models:
                raise CommandError(f"{folder}: no run in it measured CPU per order")
            for model in models:
                self.stdout.write(capacity.render(model) + "\n")
