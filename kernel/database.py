"""The database as the project uses it beyond the ORM: the order path's plain statements
(sql_one, sql_all, sql_execute)."""

from __future__ import annotations

import dataclasses
import operator
import re
from collections.abc import Callable
from enum import IntEnum
from typing import ClassVar

from django.db import DEFAULT_DB_ALIAS, connections
from psycopg import sql


# The order path's statements go through one psycopg cursor per connection, not a Django cursor
# wrapper: a new wrapper per statement cost 1.33-1.46x the CPU, and even a kept public Django cursor
# 1.07-1.15x (5-9 us more per statement), measured side by side in one process by `manage.py
# cursor_benchmark` (docs/design.md). What Django's cursor does before a statement is kept (the
# health check when enabled, the broken-transaction check, connecting), and
# `wrap_database_errors` still turns psycopg errors into Django's (IntegrityError...), fetching
# included. Query-counting hooks (execute_wrappers, connection.queries) do not see these
# statements; orders/tests/test_round_trips.py counts them on the wire instead.
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


# --- Statements composed with psycopg.sql (the order path's, in each app's queries.py) -------


class AdvisoryLock(IntEnum):
    """Every PostgreSQL advisory lock the project takes, named once (Saleor's core/db/locks.py):
    two users of one id would wait for each other for no reason."""

    STOCK_RECONCILIATION = 7_420_001  # inventory_reconcile and inventory_forget_sold, never together
    EVENT_RELAY = 7_420_002  # one relay publishes events at a time, so each order's stay in order
    # ORDER_STRATEGY=old: the class of the two-key locks (class, product id) its transaction
    # holds per product (inventory/legacy.py); the two-key form is apart from the one-key ids.
    OLD_DESIGN_PRODUCT = 7_420_003
    DEV_SERVER_PASSWORD = 7_420_004  # two starts of the dev servers set the password one after the other


class SqlParams:
    """The parameters of one SQL fragment, as a frozen dataclass: its fields are the fragment's
    parameters, named in the SQL `prefix` + field name. The fragment writes its placeholders with
    `placeholder(field)` (a field it does not have fails at import), and a statement binds the
    values with `params()`: two fragments of one statement never share a name unnoticed
    (Statement checks that their names are disjoint), so neither can bind the other's value."""

    __slots__ = ()
    prefix: ClassVar[str] = ""

    @classmethod
    def _layout(cls) -> tuple[tuple[str, ...], tuple[str, ...], Callable[[SqlParams], tuple]]:
        """Field names, their parameters' names and a getter of the values as a tuple, made once
        per class (a dict built from them costs a third of a comprehension over the fields)."""
        layout = cls.__dict__.get("_layout_cache")
        if layout is None:
            names = tuple(f.name for f in dataclasses.fields(cls))
            getter = operator.attrgetter(*names)
            values = getter if len(names) > 1 else lambda params: (getter(params),)
            layout = (names, tuple(cls.prefix + name for name in names), values)
            cls._layout_cache = layout  # a class attribute, beside the instances' slots
        return layout

    @classmethod
    def placeholder(cls, name: str) -> sql.Placeholder:
        if name not in cls._layout()[0]:
            raise ValueError(f"{cls.__name__} has no parameter {name!r}")
        return sql.Placeholder(cls.prefix + name)

    @classmethod
    def param_names(cls) -> frozenset[str]:
        return frozenset(cls._layout()[1])

    def params(self) -> dict[str, object]:
        _, keys, values = self._layout()
        return dict(zip(keys, values(self), strict=False))  # as long: both made from the fields


_NAMED_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


@dataclasses.dataclass(frozen=True, slots=True)
class Statement:
    """A statement composed from fragments, rendered once (at import) to the text the hot path
    runs: `sql_one(statement.text, statement.bind(...))`, never composed again per request. The
    whole text is kept in orders/sql/*.sql by a golden test (orders/tests/test_sql_golden.py)."""

    name: str
    text: str
    takes: tuple[type[SqlParams], ...]
    # Each class's parameter names and values getter, looked up by bind() (on the hot path).
    _layouts: dict[type[SqlParams], tuple[tuple[str, ...], Callable[[SqlParams], tuple]]] = dataclasses.field(
        default_factory=dict, repr=False, compare=False
    )

    @classmethod
    def compose(cls, name: str, composed: sql.Composable, *takes: type[SqlParams]) -> Statement:
        """Render `composed` (as_string(None): no connection needed for identifiers, literals
        and placeholders) and check that the fragments' parameter classes `takes` name disjoint
        parameters that cover every named placeholder of the text."""
        text = composed.as_string(None)
        seen: dict[str, str] = {}
        for params in takes:
            for param in params.param_names():
                if param in seen:
                    raise ValueError(f"{name}: {params.__name__} and {seen[param]} both bind %({param})s")
                seen[param] = params.__name__
        unbound = set(_NAMED_PLACEHOLDER.findall(text)) - set(seen)
        if unbound:
            raise ValueError(f"{name}: no parameter class binds {sorted(unbound)}")
        layouts = {params: params._layout()[1:] for params in takes}
        return cls(name=name, text=text, takes=takes, _layouts=layouts)

    def bind(self, *values: SqlParams) -> dict[str, object]:
        """The statement's parameters from one value of each of its classes."""
        bound: dict[str, object] = {}
        layouts = self._layouts
        for value in values:
            try:
                keys, get = layouts[type(value)]
            except KeyError:
                raise TypeError(f"{self.name} takes no {type(value).__name__}") from None
            bound.update(zip(keys, get(value), strict=False))  # as long: both made from the fields
        return bound
