"""One convention everywhere: the schema, the README and the answers name and write things alike."""

from __future__ import annotations

import re

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from config.testing import client_for, make_product, make_user, order_body

pytestmark = pytest.mark.django_db(transaction=True)

README = (settings.BASE_DIR / "README.md").read_text()


def _schema() -> dict:
    return APIClient().get("/api/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()


def test_every_path_the_readme_names_is_in_the_schema_as_written():
    in_readme = set(re.findall(r"`(?:GET|POST|DELETE|PUT|PATCH) (/api/v1/[^`\s]*)`", README))
    in_schema = set(_schema()["paths"])
    assert in_readme, "the README's API table was not found"
    assert in_readme <= in_schema, sorted(in_readme - in_schema)


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
