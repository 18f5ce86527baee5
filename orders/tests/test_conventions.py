"""One convention everywhere: the schema, the README, docs/ and the answers name and write things alike."""

from __future__ import annotations

import re

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from devtools.testing import client_for, make_product, make_user, order_body

pytestmark = pytest.mark.django_db(transaction=True)

README = settings.BASE_DIR / "README.md"
PAGES = [README, *sorted((settings.BASE_DIR / "docs").glob("*.md"))]
FENCED = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)  # curl examples name real ids: /orders/4
INLINE_CODE = re.compile(r"`([^`]+)`")
# A path as prose writes it in code: `GET /api/v1/orders/{orderId}`, `Location: /api/v1/orders/{orderId}`;
# a bare prefix such as `/api/v1/` names no path.
API_PATH = re.compile(r"(/api/v1/[^\s`]*[^\s`/])")


def _paths_named(page) -> set[str]:
    spans = INLINE_CODE.findall(FENCED.sub("", page.read_text()))
    return {path for span in spans for path in API_PATH.findall(span)}


def _schema() -> dict:
    return APIClient().get("/api/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()


# Only the pages that name an API path at all: a case for a page that names none checks an
# empty set (the next test guards the pattern itself).
@pytest.mark.parametrize("page", [page for page in PAGES if _paths_named(page)], ids=lambda page: page.name)
def test_every_path_a_page_names_is_in_the_schema_as_written(page):
    named = _paths_named(page)
    assert named <= set(_schema()["paths"]), sorted(named - set(_schema()["paths"]))


def test_the_readme_and_the_api_page_each_list_the_api():
    # Without this, a table that stopped matching the pattern would pass the test above unseen.
    api_page = settings.BASE_DIR / "docs" / "api.md"
    for page in (README, api_page):
        named = _paths_named(page)
        assert {"/api/v1/orders", "/api/v1/orders/{orderId}", "/api/v1/products/{productId}"} <= named, page.name


def test_path_parameters_are_camel_case_like_the_bodies():
    parameters = {p["name"] for operation in _schema()["paths"].values() for p in operation.get("parameters", [])} | {
        p for path in _schema()["paths"] for p in re.findall(r"{(\w+)}", path)
    }
    assert {"orderId", "productId"} <= parameters
    assert not {name for name in parameters if "_" in name}


def test_an_order_without_coupon_says_null_and_times_are_utc_with_z():
    user = make_user(balance=100)
    product = make_product(price=10)
    client = client_for(user)
    body = client.post("/api/v1/orders", order_body(user, (product, 1)), format="json").json()
    assert body["couponCode"] is None
    assert body["createdAt"].endswith("Z") and "+00:00" not in body["createdAt"]
    detail = client.get(f"/api/v1/orders/{body['orderId']}").json()
    assert detail["couponCode"] is None and all(step["at"].endswith("Z") for step in detail["progress"])


def test_a_cancelled_paid_order_shows_what_was_refunded():
    user = make_user(balance=100)
    product = make_product(price=10)
    client = client_for(user)
    placed = client.post("/api/v1/orders", order_body(user, (product, 3)), format="json").json()
    assert (placed["paidAmount"], placed["refundedAmount"]) == (30, 0)
    cancelled = client.post(f"/api/v1/orders/{placed['orderId']}/cancel").json()
    assert (cancelled["status"], cancelled["paidAmount"], cancelled["refundedAmount"]) == ("CANCELLED", 30, 30)
    assert client.get("/api/v1/accounts/me").json()["balance"] == 100


@pytest.mark.parametrize("number", ["1e30", "100000000000000000000000000000", "-1e30"])
def test_a_huge_integer_is_answered_out_of_range_not_not_an_integer(number):
    user = make_user(balance=100)
    product = make_product(price=10)
    raw = f'{{"userId": {user.id}, "orderItems": [{{"productId": {product.id}, "quantity": {number}, "price": 10}}]}}'
    answer = client_for(user).post("/api/v1/orders", raw, content_type="application/json")
    assert answer.status_code == 400
    message = str(answer.json()["error"]["details"])
    assert "greater than or equal" in message or "less than or equal" in message, message
    assert "integer is required" not in message
