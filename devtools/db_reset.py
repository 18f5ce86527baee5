"""The database after a transactional test as clean as Django's flush leaves it, in a fraction of
its time (devtools/pytest_plugin.py installs it).

Django's TransactionTestCase empties the database after each test with `flush`: one TRUNCATE of
every table (a new file for each table and each of its indexes, fsynced at commit), then the
post_migrate signal, which creates the content types and permissions again, app by app. Most of
the suite's tests are transactional, and most of them write to a handful of tables.

Here, once Django's own flush has emptied the database after the session's first transactional
test, the state it left is recorded: each table's size on disk (pg_total_relation_size: every
fork, index and TOAST table) and the exact rows of the content types and permissions. After each
later test:

- every table whose size differs from that record is truncated, all in one TRUNCATE ... CASCADE
  (the tables that reference one go with it, as PostgreSQL requires). A row written to a table
  since it was emptied, committed or rolled back, grew its primary key's b-tree, and a b-tree
  never shrinks without a TRUNCATE (VACUUM may shorten a heap, never a b-tree): a table of the
  recorded size holds no row and is, file for file, as the flush left it;
- the content types and permissions are left alone while their rows are exactly those recorded;
  otherwise they are truncated too and post_migrate creates them again, as after flush.

Tests that ask for anything else of the teardown (available_apps, serialized rollback, more than
the default database) get Django's own flush.
"""

from __future__ import annotations

# The tables post_migrate fills again after a flush (django.contrib.contenttypes and .auth are
# its only receivers here: checked at the first reset).
_RECREATED = ("django_content_type", "auth_permission")
_RECEIVERS = {"create_contenttypes", "create_permissions"}


class _Clean:
    tables: list[str] | None = None  # every table flush empties
    unsupported = False  # a schema or post_migrate receivers this was not written for: flush always
    sizes: dict[str, int] = {}  # table -> pg_total_relation_size when clean
    recreated: str = ""  # the content types' and permissions' rows, when clean


def _sizes(cursor, tables: list[str]) -> dict[str, int]:
    cursor.execute("SELECT t, pg_total_relation_size(quote_ident(t)::regclass) FROM unnest(%s::text[]) AS t", [tables])
    return dict(cursor.fetchall())


def _recreated_rows(cursor) -> str:
    cursor.execute(
        "SELECT (SELECT coalesce(string_agg(c::text, ',' ORDER BY c.id), '') FROM django_content_type c)"
        " || '|' || (SELECT coalesce(string_agg(p::text, ',' ORDER BY p.id), '') FROM auth_permission p)"
    )
    return cursor.fetchone()[0]


def _assert_empty(cursor, connection, tables: list[str]) -> None:
    """Not an argument but a check: no table is left with a row (one statement for them all)."""
    cursor.execute(
        " UNION ALL ".join(
            f"SELECT {i} WHERE EXISTS (SELECT FROM {connection.ops.quote_name(t)})" for i, t in enumerate(tables)
        )
    )
    left = [tables[row[0]] for row in cursor.fetchall()]
    assert not left, f"rows left after the reset in {left}"


def _only_the_known_receivers() -> bool:
    from django.db.models.signals import post_migrate

    names = {getattr(receiver, "__name__", "") for receiver in post_migrate._live_receivers(None)[0]}
    return names <= _RECEIVERS


def _record(connection) -> None:
    with connection.cursor() as cursor:
        tables = connection.introspection.django_table_names(only_existing=True, include_views=False)
        if not set(_RECREATED) <= set(tables) or not _only_the_known_receivers():
            _Clean.unsupported = True
            return
        _Clean.sizes = _sizes(cursor, tables)
        _Clean.recreated = _recreated_rows(cursor)
        _Clean.tables = tables


def _reset(connection) -> None:
    from django.core.management.sql import emit_post_migrate_signal
    from django.db import transaction

    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        sizes = _sizes(cursor, _Clean.tables)
        dirty = [t for t in _Clean.tables if t not in _RECREATED and sizes[t] != _Clean.sizes[t]]
        recreate = _recreated_rows(cursor) != _Clean.recreated
        if recreate:
            dirty += _RECREATED
        if dirty:
            cursor.execute("TRUNCATE " + ", ".join(connection.ops.quote_name(t) for t in dirty) + " CASCADE")
        _assert_empty(cursor, connection, [t for t in _Clean.tables if t not in _RECREATED])
    if recreate:
        emit_post_migrate_signal(0, False, connection.alias)
        with connection.cursor() as cursor:
            _Clean.recreated = _recreated_rows(cursor)


def install() -> None:
    from django.db import DEFAULT_DB_ALIAS, connections
    from django.test import TransactionTestCase

    flush = TransactionTestCase._fixture_teardown

    def _fixture_teardown(self) -> None:
        names = self._databases_names(include_mirrors=False)
        if self.available_apps is not None or self.serialized_rollback or names != [DEFAULT_DB_ALIAS]:
            return flush(self)
        connection = connections[DEFAULT_DB_ALIAS]
        if _Clean.unsupported:
            flush(self)
        elif _Clean.tables is None:
            flush(self)
            _record(connection)
        else:
            _reset(connection)

    TransactionTestCase._fixture_teardown = _fixture_teardown
