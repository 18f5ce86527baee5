import signal

from django.core.management.base import BaseCommand, CommandError

from orders.settlement import StopFlag, settler_run


class Command(BaseCommand):
    help = (
        "Pay asynchronous orders (PENDING_PAYMENT) in batches until SIGTERM or Ctrl-C; the batch "
        "in hand is finished first. Run as many as you like, on any host: they share the work."
    )

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, help="orders per transaction at most (default SETTLE_BATCH_SIZE)")
        parser.add_argument("--until-empty", action="store_true", help="exit once no order is waiting for payment")

    def handle(self, *args, **options):
        if options["batch_size"] is not None and options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        stop = StopFlag()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        self.stderr.write("settler: waiting for orders to pay (SIGTERM or Ctrl-C to stop)")
        totals = settler_run(batch_size=options["batch_size"], stop=stop, until_empty=options["until_empty"])
        self.stderr.write(
            f"settler: stopped after {totals.batches} batches: {totals.paid} paid, {totals.cancelled} cancelled"
        )
