import time

from django.core.management.base import BaseCommand
from django.db import DEFAULT_DB_ALIAS, connection, connections

from kernel.database import sql_one

STATEMENT = "SELECT %s::int + 1"


def _private_psycopg_cursor(value: int):
    return sql_one(STATEMENT, [value])


def _kept_django_cursor(value: int):
    """The public alternative: one Django cursor per connection, made once and kept."""
    db = connections[DEFAULT_DB_ALIAS]
    db.close_if_health_check_failed()
    db.ensure_connection()
    cached = getattr(db, "_benchmark_cursor", None)
    if cached is None or cached.cursor.connection is not db.connection:
        cached = db._benchmark_cursor = db.cursor()
    cached.execute(STATEMENT, [value])
    return cached.fetchone()


def _new_django_cursor(value: int):
    with connection.cursor() as cursor:
        cursor.execute(STATEMENT, [value])
        return cursor.fetchone()


WAYS = {
    "private psycopg cursor (kernel.database)": _private_psycopg_cursor,
    "kept Django cursor": _kept_django_cursor,
    "new Django cursor per statement": _new_django_cursor,
}


class Command(BaseCommand):
    help = (
        "CPU time per statement of the ways the order path could run its SQL, alternating in one "
        "process against the configured database: kernel.database's private psycopg cursor, a kept "
        "public Django cursor, a new Django cursor each time (docs/design.md)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--statements", type=int, default=20_000, help="per way and round (default 20,000)")
        parser.add_argument("--rounds", type=int, default=3, help="rounds, each running every way once")

    def handle(self, *args, **options):
        spent: dict[str, list[float]] = {name: [] for name in WAYS}
        for run in WAYS.values():
            run(0)  # connected, cursors made
        for round_ in range(1, options["rounds"] + 1):
            for name, run in WAYS.items():
                started = time.process_time()
                for value in range(options["statements"]):
                    run(value)
                per_statement_us = (time.process_time() - started) / options["statements"] * 1e6
                spent[name].append(per_statement_us)
                self.stdout.write(f"round {round_}: {name}: {per_statement_us:.1f} us CPU per statement")
        best = min(spent["private psycopg cursor (kernel.database)"])
        for name, values in spent.items():
            self.stdout.write(f"{name}: best {min(values):.1f} us, {min(values) / best:.2f}x kernel.database's")
