import time

from django.core.management.base import BaseCommand

from orders import sales_counter


class Command(BaseCommand):
    help = "Example event consumer: keep units sold per product from the order events, idempotently."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="read what is there, then stop")

    def handle(self, *args, **options):
        trimmed_at = 0.0
        while True:
            if time.monotonic() - trimmed_at >= 60:  # the seen event ids, kept for their retention
                sales_counter.seen_events_trim()
                trimmed_at = time.monotonic()
            applied = sales_counter.consume(block_ms=None if options["once"] else 1000)
            if applied:
                self.stdout.write(f"applied {applied} events; units sold: {sales_counter.units_sold()}")
            if options["once"] and not applied:
                return
