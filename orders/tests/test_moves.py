"""The status machine's single statement takes only the fields it knows, under `python -O` too."""

import os
import subprocess
import sys
import textwrap

import pytest
from django.conf import settings

from config.local import current_database_url
from devtools.testing import client_for, make_product, make_user, order_body
from orders.models import Order

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_field_name_outside_the_list_is_refused_before_any_sql_even_under_python_O():
    user = make_user(balance=1_000)
    order_id = (
        client_for(user).post("/api/v1/orders", order_body(user, (make_product(), 1)), format="json").json()["orderId"]
    )
    # An assert would be gone under -O and the name would reach the SQL text.
    program = textwrap.dedent(f"""
        import django
        django.setup()
        from orders.models import Order
        from orders.status import order_move as _move
        order = Order.objects.get(pk={order_id})
        order.items_cache = list(order.items.all())
        try:
            _move(order, "CANCELLED", "order.cancelled", **{{"paid_amount = 0, status": "PAID"}})
        except ValueError as error:
            print("refused:", error)
    """)
    child = subprocess.run(
        [sys.executable, "-O", "-c", program],
        cwd=settings.BASE_DIR,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "DATABASE_URL": current_database_url()},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert child.returncode == 0, child.stderr
    assert child.stdout.startswith("refused: not a field a status move sets"), child.stdout
    order = Order.objects.get(pk=order_id)
    assert (order.status, order.paid_amount) == ("PAID", 100)
