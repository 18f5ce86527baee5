"""What one usual order costs in round trips, counted on the wire: a regression shows here.

PostgreSQL's side is libpq's own trace of this connection (every message the client sends);
Redis' side is what MONITOR shows clients sending (not the commands a script runs). The
token is read from the Redis token map, a GET (accounts/authentication.py); it was mapped when
it was issued, so no statement reads it."""

from __future__ import annotations

import pytest
from django.db import connection

from devtools.testing import client_for, make_product, make_user, order_body, wire_count
from inventory import redis_counts

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def warm_caller():
    user = make_user(balance=1_000)
    product = make_product(price=7, stock_quantity=50)
    client = client_for(user)
    assert client.get("/api/v1/accounts/me").status_code == 200
    # As in a worker that has served orders: its scripts are loaded in Redis, its statements
    # prepared (a fresh Redis answers the first EVALSHA with NOSCRIPT, and redis-py loads it).
    assert client.post("/api/v1/orders", order_body(user, (product, 1)), format="json").status_code == 201
    return user, product, client


def test_a_paid_order_is_one_statement_the_token_get_and_one_script(warm_caller):
    user, product, client = warm_caller
    with wire_count() as counted:
        answer = client.post("/api/v1/orders", order_body(user, (product, 2)), format="json")
    assert answer.status_code == 201, answer.content
    assert counted.postgres_round_trips == 1
    assert counted.redis_commands == ["GET", "EVALSHA"]


def test_an_accepted_order_is_the_token_get_one_script_and_no_statement(warm_caller):
    """The intake (orders/intake.py); the order before took the block of order ids."""
    user, product, client = warm_caller
    client.post("/api/v1/orders", order_body(user, (product, 1)), format="json", HTTP_PREFER="respond-async")
    with wire_count() as counted:
        answer = client.post("/api/v1/orders", order_body(user, (product, 2)), format="json",
                             HTTP_PREFER="respond-async")  # fmt: skip
    assert answer.status_code == 202, answer.content
    assert counted.postgres_round_trips == 0
    assert counted.redis_commands == ["GET", "EVALSHA"]


def test_an_order_accepted_by_the_database_is_one_statement_one_script_and_a_wake_up(warm_caller, settings):
    """ORDER_ASYNC_INTAKE=database, the design before the intake: the request writes the order."""
    user, product, client = warm_caller
    settings.ORDER_ASYNC_INTAKE = "database"
    settings.PAYMENT_BACKLOG_CHECK_SECONDS = 3600  # the order before reads the backlog for both
    client.post("/api/v1/orders", order_body(user, (product, 1)), format="json", HTTP_PREFER="respond-async")
    with wire_count() as counted:
        answer = client.post("/api/v1/orders", order_body(user, (product, 2)), format="json",
                             HTTP_PREFER="respond-async")  # fmt: skip
    assert answer.status_code == 202, answer.content
    assert counted.postgres_round_trips == 1
    assert counted.redis_commands == ["GET", "EVALSHA", "XADD"]


def test_the_wire_count_sees_every_statement_and_command(warm_caller):
    """The counter itself: two plain statements are two round trips, and a script's commands
    are not the client's."""
    with wire_count() as counted, connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.execute("SELECT 2")
        redis_counts.redis_client().set("round-trips:probe", 1)
        redis_counts.redis_client().eval("return redis.call('GET', KEYS[1])", 1, "round-trips:probe")
    assert counted.postgres_round_trips == 2
    assert counted.redis_commands == ["SET", "EVAL"]
