import time

from django.core.management.base import BaseCommand

from inventory.reconciliation import inventory_reconcile
from kernel.command_args import positive_seconds


class Command(BaseCommand):
    help = "Compare Redis stock with the database ledger; release abandoned reservations and repair drift."

    def add_arguments(self, parser):
        parser.add_argument("--check", action="store_true", help="report only, change nothing")
        parser.add_argument("--grace", type=float, default=None, help="seconds before a reservation is abandoned")
        parser.add_argument("--every", type=positive_seconds, default=0, help="run forever, every N seconds")

    def handle(self, *args, **options):
        while True:
            report = inventory_reconcile(repair=not options["check"], grace_seconds=options["grace"])
            self._print(report, options["check"])
            if not options["every"]:
                return
            time.sleep(options["every"])

    def _print(self, report, check_only):
        if report.rebuilt:
            self.stdout.write(
                "Redis stock is not loaded by this run of the server (empty, restarted or failed over): "
                + ("--check changed nothing; run without it to rebuild" if check_only else "rebuilt from the database")
            )
        if report.released_tokens:
            self.stdout.write(f"released {len(report.released_tokens)} abandoned reservations")
        if report.pending_moves:
            self.stdout.write(
                f"{report.pending_moves} returns or restocks were between the two snapshots: pending, not drift"
            )
        self.stdout.write(
            f"{'product':>8} {'on hand':>10} {'in flight':>10} {'expected':>10} {'redis':>10} {'drift':>8}"
        )
        for p in report.products:
            redis = "-" if p.redis is None else str(p.redis)
            self.stdout.write(
                f"{p.product_id:>8} {p.on_hand:>10} {p.in_flight:>10} {p.expected:>10} {redis:>10} {p.drift:>8}"
            )
        if report.drifted:
            verb = "found (not repaired: --check)" if check_only else "repaired"
            self.stdout.write(self.style.WARNING(f"drift {verb} on {len(report.drifted)} products"))
        else:
            self.stdout.write(self.style.SUCCESS(f"Redis matches the database ({len(report.products)} products)"))
