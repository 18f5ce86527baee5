"""The reference an order's money and stock carry in the ledgers (balance entries, stock
movements, coupon uses): written once here, in Python and in SQL. Payments keeps it, the lowest
app that knows of orders (a payment is for an order): orders, payments and the load-test toolkit
read it from here, and nothing below payments needs it."""

from psycopg import sql

ORDER_REFERENCE_PREFIX = "order:"


def order_reference(order_id: int) -> str:
    return f"{ORDER_REFERENCE_PREFIX}{order_id}"


def order_reference_sql(order_id: sql.Composable) -> sql.Composed:
    """order_reference as an SQL expression of the SQL expression `order_id`."""
    return sql.SQL("{} || {}").format(sql.Literal(ORDER_REFERENCE_PREFIX), order_id)
