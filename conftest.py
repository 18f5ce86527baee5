"""Shared fixtures: real PostgreSQL and Redis (see config/pytest_plugin.py)."""

import pytest
from redis.connection import parse_url

from accounts.authentication import forget_tokens
from inventory import stock


@pytest.fixture(autouse=True)
def clean_redis(settings):
    """Every test starts from an empty Redis keyspace of its own (logical db 15), stock loaded."""
    assert parse_url(settings.REDIS_URL).get("db") == settings.TEST_REDIS_DB, (
        "tests never touch the development keyspace"
    )
    client = stock.redis_client()
    client.flushdb()
    stock.mark_loaded()
    forget_tokens()
    yield
    client.flushdb()
