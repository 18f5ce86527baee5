"""Page numbers are read as the schema writes them: a positive integer in ASCII digits."""

from __future__ import annotations

import pytest

from devtools.testing import client_for, make_product, make_user

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def client():
    for number in range(3):
        make_product(name=f"Product {number}")
    return client_for(make_user())


@pytest.mark.parametrize(
    ("page", "expected_status"),
    [
        (None, 200),
        ("1", 200),
        # Python's int() reads all of these as 1, and DRF took "last" and "" too.
        (" 1", 404),
        ("+1", 404),
        ("0_1", 404),
        ("\u0661", 404),  # ARABIC-INDIC DIGIT ONE
        ("01", 404),
        ("last", 404),
        ("", 404),
        ("0", 404),
        ("-1", 404),
        ("2", 404),  # past the last page
        ("9" * 40, 404),
    ],
)
def test_a_page_number_is_a_positive_integer_and_nothing_else(client, page, expected_status):
    response = client.get("/api/v1/products", {} if page is None else {"page": page})
    assert response.status_code == expected_status, response.content
    if expected_status == 404:
        assert response.json()["error"] == {"code": "NOT_FOUND", "message": "Invalid page.", "details": {}}
    else:
        assert response.json()["count"] == 3 and len(response.json()["results"]) == 3
