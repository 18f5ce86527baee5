"""The one error handler: what an answer carries besides its body."""

from __future__ import annotations

import pytest
from django.db import DataError

from accounts.errors import LoginRateLimited
from inventory.errors import RateLimited
from kernel.errors import api_exception_handler


def test_a_database_refusal_is_a_503_with_retry_after_like_every_503():
    response = api_exception_handler(DataError("value too long"), {})
    assert response.status_code == 503 and response["Retry-After"] == "1"
    assert response.data["error"]["code"] == "SERVICE_UNAVAILABLE"


@pytest.mark.parametrize("error", [RateLimited, LoginRateLimited])
def test_a_429_always_says_when_to_try_again(error):
    assert api_exception_handler(error(), {})["Retry-After"] == "1"  # the raise site says how long
    assert api_exception_handler(error(retry_after=7), {})["Retry-After"] == "7"
