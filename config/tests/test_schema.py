"""The schema's key facts, without the fuzzer (config/tests/test_schema_fuzz.py): lists are
pages, each operation documents its error answers in the one error shape with their headers,
and every domain error is documented where it can be raised."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.core.management import call_command
from drf_spectacular.generators import SchemaGenerator

from kernel.errors import DomainError
from kernel.schema import ErrorAnswer
from orders.idempotency import RememberedError

ERROR_REF = {"$ref": "#/components/schemas/Error"}


@pytest.fixture(scope="module")
def schema() -> dict:
    return SchemaGenerator().get_schema(request=None, public=True)


def _operations(schema: dict):
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            yield f"{method.upper()} {path}", operation


def _codes(response: dict) -> set[str]:
    examples = response["content"]["application/json"]["examples"]
    return {example["value"]["error"]["code"] for example in examples.values()}


def test_the_schema_is_valid_openapi_and_generates_without_a_warning(tmp_path):
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))


@pytest.mark.parametrize(("path", "item"), [("/api/v1/orders", "OrderOutput"), ("/api/v1/products", "ProductOutput")])
def test_lists_are_documented_as_the_pages_they_answer(schema, path, item):
    operation = schema["paths"][path]["get"]
    page = schema["components"]["schemas"][f"Paginated{item}List"]
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": f"#/components/schemas/Paginated{item}List"
    }
    assert page["type"] == "object"
    assert set(page["required"]) == {"count", "results"}
    assert page["properties"]["count"]["type"] == "integer"
    assert page["properties"]["next"]["nullable"] and page["properties"]["previous"]["nullable"]
    assert page["properties"]["results"] == {"type": "array", "items": {"$ref": f"#/components/schemas/{item}"}}
    [page_parameter] = [p for p in operation["parameters"] if p["name"] == "page"]
    assert page_parameter["in"] == "query" and page_parameter["schema"]["minimum"] == 1
    assert _codes(operation["responses"]["404"]) == {"NOT_FOUND"}  # a page past the last


def test_an_order_needs_one_item_and_at_most_the_limit(schema):
    items = schema["components"]["schemas"]["OrderInputRequest"]["properties"]["orderItems"]
    assert (items["minItems"], items["maxItems"]) == (1, settings.MAX_ORDER_ITEMS)


def test_every_error_answer_has_the_one_error_shape(schema):
    components = schema["components"]["schemas"]
    assert components["Error"]["required"] == ["error"]
    assert components["Error"]["properties"]["error"] == {"$ref": "#/components/schemas/ErrorDetail"}
    assert set(components["ErrorDetail"]["required"]) == {"code", "message", "details"}
    for name, operation in _operations(schema):
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                assert response["content"]["application/json"]["schema"] == ERROR_REF, (name, status)
                assert _codes(response), (name, status)


# What the fuzzer found undocumented (issue 19), operation by operation.
DOCUMENTED = [
    ("POST /api/v1/orders", {201, 202, 400, 401, 403, 404, 406, 409, 413, 415, 422, 429, 431, 503}),
    ("GET /api/v1/orders", {200, 401, 404, 406, 431, 503}),
    ("GET /api/v1/orders/{orderId}", {200, 401, 404, 406, 431, 503}),
    ("POST /api/v1/orders/{orderId}/cancel", {200, 401, 404, 406, 409, 431, 503}),
    ("GET /api/v1/products", {200, 401, 404, 406, 431, 503}),
    ("GET /api/v1/products/{productId}", {200, 401, 404, 406, 431, 503}),
    ("GET /api/v1/accounts/me", {200, 401, 406, 431, 503}),
    ("POST /api/v1/auth/token", {201, 400, 401, 406, 413, 415, 429, 431, 503}),
    ("DELETE /api/v1/auth/token", {204, 401, 406, 431, 503}),
]


@pytest.mark.parametrize(("name", "statuses"), DOCUMENTED, ids=[name for name, _ in DOCUMENTED])
def test_each_operation_documents_every_status_it_answers(schema, name, statuses):
    operations = dict(_operations(schema))
    assert {int(status) for status in operations[name]["responses"]} == statuses


def test_the_order_path_documents_each_business_error_under_its_status(schema):
    responses = dict(_operations(schema))["POST /api/v1/orders"]["responses"]
    assert {"OUT_OF_STOCK", "PRICE_CHANGED", "INSUFFICIENT_BALANCE", "COUPON_INVALID", "PURCHASE_LIMIT_REACHED",
            "TOO_MANY_UNPAID_ORDERS", "PRODUCT_UNAVAILABLE", "CONFLICT"} <= _codes(responses["409"])  # fmt: skip
    assert _codes(responses["403"]) == {"FORBIDDEN"}
    assert _codes(responses["422"]) == {"IDEMPOTENCY_KEY_REUSED"}
    assert _codes(responses["429"]) == {"RATE_LIMITED", "TOO_MANY_IDEMPOTENCY_KEYS"}
    assert _codes(responses["404"]) == {"NOT_FOUND"}


def test_answers_that_carry_headers_document_them(schema):
    for name, operation in _operations(schema):
        responses = operation["responses"]
        for status in ("429", "503"):
            if status in responses:
                assert responses[status]["headers"]["Retry-After"]["required"], (name, status)
        if "UNAUTHENTICATED" in _codes(responses["401"]):
            assert responses["401"]["headers"]["WWW-Authenticate"]["required"], name
    accepted = schema["paths"]["/api/v1/orders"]["post"]["responses"]["202"]["headers"]
    assert accepted["Location"]["required"] and accepted["Preference-Applied"]["required"]


def _all_subclasses(cls: type) -> set[type]:
    return {sub for direct in cls.__subclasses__() for sub in {direct, *_all_subclasses(direct)}}


def test_every_domain_error_is_documented_by_an_operation_that_can_raise_it(schema):
    documented = {
        example
        for _, operation in _operations(schema)
        for status, response in operation["responses"].items()
        if int(status) >= 400
        for example in response["content"]["application/json"]["examples"]
    }
    # RememberedError replays another error's answer, documented under that error's own name.
    errors = {
        error
        for error in _all_subclasses(DomainError)
        if error is not RememberedError and not error.admin_only and ".tests." not in f".{error.__module__}."
    }
    assert {error.__name__ for error in errors} - documented == set()


def test_a_domain_error_with_retry_after_is_documented_as_sending_it():
    class Throttled(DomainError):
        status_code, retry_after = 429, 5

    assert ErrorAnswer.of(Throttled).retry_after and not ErrorAnswer.of(DomainError).retry_after
