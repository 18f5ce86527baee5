"""The order path's statements written out whole, as PostgreSQL runs them, in orders/sql/*.sql:
the reader sees each statement in one piece, and review sees each change to one. A statement
whose text changed fails here; if the change is meant, regenerate the files with

    UPDATE_GOLDEN_SQL=1 python -m pytest orders/tests/test_sql_golden.py

and commit them with the change."""

import os
from pathlib import Path

import pytest

from accounts import queries as accounts
from inventory import queries as inventory
from orders import queries as orders
from payments import queries as payments

GOLDEN = Path(__file__).resolve().parents[1] / "sql"
STATEMENTS = (
    *orders.ORDER_PATH_STATEMENTS,
    inventory.RECORD_UNITS,
    accounts.CHANGE,
    accounts.WITHDRAW_MANY,
    payments.INSERT_PAYMENT,
    payments.INSERT_PAYMENTS,
)


def _as_file(text: str) -> str:
    return text.strip() + "\n"


@pytest.mark.parametrize("statement", STATEMENTS, ids=lambda statement: statement.name)
def test_each_statement_of_the_order_path_is_written_out_whole_in_orders_sql(statement):
    path = GOLDEN / f"{statement.name}.sql"
    if os.environ.get("UPDATE_GOLDEN_SQL") == "1":
        path.write_text(_as_file(statement.text))
    assert path.exists(), f"{path} is missing: run with UPDATE_GOLDEN_SQL=1 to write it"
    assert path.read_text() == _as_file(statement.text), (
        f"{statement.name}'s text changed; if that is meant, run with UPDATE_GOLDEN_SQL=1 and commit {path}"
    )


def test_no_golden_file_is_left_without_its_statement():
    names = {statement.name for statement in STATEMENTS}
    assert {path.stem for path in GOLDEN.glob("*.sql")} <= names


def test_statement_names_are_unique():
    assert len({statement.name for statement in STATEMENTS}) == len(STATEMENTS)
