"""The database as the project uses it beyond the ORM: the order path's plain statements
(sql_one, sql_all, sql_execute)."""

from django.db import DEFAULT_DB_ALIAS, connections


# The order path's statements go through one psycopg cursor per connection, not a new Django
# cursor wrapper each: measured at 35-60 us of CPU less per statement, about a tenth of an
# order's Python time. What Django's cursor does before a statement is kept (the health check
# when enabled, the broken-transaction check, connecting), and `wrap_database_errors` still
# turns psycopg errors into Django's (IntegrityError...), fetching included. Query-counting
# hooks (execute_wrappers, connection.queries) do not see these statements.
def _reused_cursor(db):
    db.close_if_health_check_failed()
    db.ensure_connection()
    db.validate_no_broken_transaction()
    raw = db.connection
    cached = getattr(db, "_order_path_cursor", None)
    if cached is None or cached[0] is not raw:
        cached = (raw, raw.cursor())
        db._order_path_cursor = cached
    return cached[1]


def _run(query: str, params: dict | list | tuple, answer):
    db = connections[DEFAULT_DB_ALIAS]  # one lookup of this thread's connection, not one per attribute
    with db.wrap_database_errors:
        cursor = _reused_cursor(db)
        cursor.execute(query, params)
        return answer(cursor)


def sql_one(query: str, params: dict | list | tuple) -> tuple | None:
    """Run one statement and return its first row (None: no row)."""
    return _run(query, params, lambda cursor: cursor.fetchone())


def sql_all(query: str, params: dict | list | tuple) -> list[tuple]:
    return _run(query, params, lambda cursor: cursor.fetchall())


def sql_execute(query: str, params: dict | list | tuple) -> int:
    """Run one statement; returns the number of rows it changed."""
    return _run(query, params, lambda cursor: cursor.rowcount)
