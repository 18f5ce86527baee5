from django.core.management.base import BaseCommand, CommandError

from loadtest.seeding import DEFAULT_BALANCE, DEFAULT_STOCK, SeedRefused, SeedShape, database_is_empty, seed


class Command(BaseCommand):
    help = "Reset PostgreSQL and Redis to the load-test data (the seed report's shape by default)."

    def add_arguments(self, parser):
        parser.add_argument("--users", type=int, default=500, help="customers 1..N (default 500)")
        parser.add_argument("--products", type=int, default=5, help="products 1..N (default 5)")
        parser.add_argument("--stock", type=int, default=DEFAULT_STOCK, help="units per product")
        parser.add_argument("--balance", type=int, default=DEFAULT_BALANCE, help="balance per user, minor units")
        parser.add_argument("--price", type=int, default=1, help="price of every product, minor units")
        parser.add_argument(
            "--orders", type=int, default=0, help="past orders to write, paid (one in 20 cancelled), default 0"
        )
        parser.add_argument("--history-days", type=float, default=30.0, help="the past orders span (default 30)")
        parser.add_argument("--if-empty", action="store_true", help="only seed when there are no products yet")

    def handle(self, *args, **options):
        if options["if_empty"] and not database_is_empty():
            self.stdout.write(
                "the database already has data: not reseeding. To reset it to the load-test data "
                "(customers, products, orders and stock are replaced; staff users are kept), run "
                "`.venv/bin/python manage.py seed_loadtest`."
            )
            return
        shape = SeedShape(
            users=options["users"],
            products=options["products"],
            stock=options["stock"],
            balance=options["balance"],
            price=options["price"],
            orders=options["orders"],
            history_days=options["history_days"],
        )
        try:
            seed(shape, progress=lambda message: self.stdout.write(f"  {message}"))
        except SeedRefused as refused:
            raise CommandError(f"not seeding: {refused}") from refused
        self.stdout.write(self.style.SUCCESS("seeded"))
