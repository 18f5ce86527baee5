"""Shared fixtures: real PostgreSQL and Redis (see config/pytest_plugin.py)."""

import pytest

from accounts.authentication import forget_tokens
from inventory import stock


@pytest.fixture(autouse=True)
def clean_redis(settings):
    """Every test starts from an empty Redis keyspace of its own (logical db 15), stock loaded."""
    assert settings.REDIS_URL.endswith("/15"), "tests must never touch the development keyspace"
    client = stock.redis_client()
    client.flushdb()
    client.set(stock.READY_KEY, "1")
    forget_tokens()
    yield
    client.flushdb()
