"""Payments' SQL: the payment row as a fragment an order's statement composes (the synchronous
order writes it in its own statement, orders/queries.py), and the inserts payments runs on its
own. Composed with psycopg.sql and rendered once at import. The statements as PostgreSQL runs
them are in orders/sql/*.sql."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from kernel.database import SqlParams, Statement
from payments.models import Payment

_PAYMENT = sql.Identifier(Payment._meta.db_table)


@dataclass(frozen=True, slots=True)
class NewPayment(SqlParams):
    """The payment of `amount` by `user_id`, in `status`."""

    prefix = "payment_"
    user_id: int
    amount: int
    status: str

    @classmethod
    def captured(cls, *, user_id: int, amount: int) -> NewPayment:
        return cls(user_id=user_id, amount=amount, status=Payment.Status.CAPTURED)


def payment_insert_cte(*, source: sql.Identifier, order_id: sql.Composable) -> sql.Composed:
    """CTE `payment`: the payment (NewPayment) for the order whose id is the SQL expression
    `order_id`, once per row of the CTE `source`. For a statement that writes the order and its
    payment together; the unique order id still makes a second charge fail."""
    return sql.SQL("""
payment AS (
    INSERT INTO {payment} (order_id, user_id, amount, status, created_at)
    SELECT {order_id}, {user_id}, {amount}, {status}, now() FROM {source}
)""").format(
        payment=_PAYMENT,
        order_id=order_id,
        user_id=NewPayment.placeholder("user_id"),
        amount=NewPayment.placeholder("amount"),
        status=NewPayment.placeholder("status"),
        source=source,
    )


# One payment, its values by position: order id, user id, amount, status.
INSERT_PAYMENT = Statement.compose(
    "payment_insert",
    sql.SQL(
        "INSERT INTO {payment} (order_id, user_id, amount, status, created_at) "
        "VALUES (%s, %s, %s, %s, now()) RETURNING id"
    ).format(payment=_PAYMENT),
)


@dataclass(frozen=True, slots=True)
class NewPayments(SqlParams):
    """Many payments (JSON: order_id, user_id, amount), all in `status`."""

    charges: str
    status: str


INSERT_PAYMENTS = Statement.compose(
    "payment_insert_many",
    sql.SQL("""
INSERT INTO {payment} (order_id, user_id, amount, status, created_at)
SELECT charge.order_id, charge.user_id, charge.amount, {status}, now()
FROM jsonb_to_recordset({charges}::jsonb) AS charge(order_id bigint, user_id bigint, amount bigint)
""").format(payment=_PAYMENT, status=NewPayments.placeholder("status"), charges=NewPayments.placeholder("charges")),
    NewPayments,
)
