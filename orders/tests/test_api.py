"""Every endpoint, every error code, and a table of bad input that must change nothing."""

from __future__ import annotations

import datetime
import json

import orjson
import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import Account, BalanceEntry
from accounts.selectors import ledger_balance
from accounts.services import account_change_balance
from coupons.models import Coupon, CouponRedemption
from devtools.testing import client_for, make_product, make_user, order_body
from inventory import redis_counts
from inventory.models import StockMovement
from inventory.reconciliation import inventory_reconcile, on_hand_by_product
from inventory.services import product_update
from orders.api import request_fingerprint
from orders.models import Order

pytestmark = pytest.mark.django_db(transaction=True)


def state_fingerprint() -> dict:
    """Everything an order could change: counts of rows, balances, stock in both places."""
    products = on_hand_by_product()
    return {
        "orders": Order.objects.count(),
        "movements": StockMovement.objects.count(),
        "entries": BalanceEntry.objects.count(),
        "balances": sorted(Account.objects.values_list("user_id", "balance", "version")),
        "on_hand": products,
        "redis": redis_counts.available(product_ids=list(products)),
        "coupon_uses": list(Coupon.objects.values_list("code", "times_used")),
        "redemptions": CouponRedemption.objects.count(),
    }


@pytest.fixture
def shop():
    user = make_user(balance=1_000)
    product = make_product(price=100, stock_quantity=10)
    other = make_product(price=250, stock_quantity=5, name="Gadget")
    return user, client_for(user), product, other


def test_place_order_answers_201_with_the_order_and_takes_stock_and_money(shop):
    user, client, product, other = shop
    response = client.post("/api/v1/orders", order_body(user, (product, 2), (other, 1)), format="json")

    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "PAID"
    assert body["totalAmount"] == 450 and body["discountAmount"] == 0 and body["paidAmount"] == 450
    assert body["items"] == [
        {"productId": product.id, "quantity": 2, "unitPrice": 100},
        {"productId": other.id, "quantity": 1, "unitPrice": 250},
    ]
    assert body["createdAt"]
    assert Account.objects.get(user=user).balance == 550 == ledger_balance(user_id=user.id)
    assert redis_counts.available(product_ids=[product.id, other.id]) == {product.id: 8, other.id: 4}
    assert on_hand_by_product() == {product.id: 8, other.id: 4}


def test_the_seed_body_with_a_repeated_product_adds_the_quantities(shop):
    user, client, product, _ = shop
    body = {
        "userId": user.id,
        "orderItems": [{"productId": product.id, "quantity": 2, "price": 100}] * 2,
    }
    response = client.post("/api/v1/orders", body, format="json")

    assert response.status_code == 201
    assert response.json()["items"] == [{"productId": product.id, "quantity": 4, "unitPrice": 100}]
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 6}


def test_coupon_discount_is_applied_and_paid_amount_reduced(shop):
    user, client, product, _ = shop
    Coupon.objects.create(code="TENOFF", kind=Coupon.Kind.PERCENT, value=10, max_discount=15)
    response = client.post("/api/v1/orders", order_body(user, (product, 3), coupon="TENOFF"), format="json")

    assert response.status_code == 201
    assert (response.json()["discountAmount"], response.json()["paidAmount"]) == (15, 285)
    assert Account.objects.get(user=user).balance == 715
    assert Coupon.objects.get(code="TENOFF").times_used == 1


def test_get_order_list_orders_and_cancel_gives_everything_back(shop):
    user, client, product, _ = shop
    Coupon.objects.create(code="FIVE", kind=Coupon.Kind.FIXED, value=5, usage_limit=1)
    order_id = client.post("/api/v1/orders", order_body(user, (product, 2), coupon="FIVE"), format="json").json()[
        "orderId"
    ]

    detail = client.get(f"/api/v1/orders/{order_id}")
    listing = client.get("/api/v1/orders")
    cancel = client.post(f"/api/v1/orders/{order_id}/cancel")
    cancel_again = client.post(f"/api/v1/orders/{order_id}/cancel")

    assert detail.status_code == 200 and detail.json()["orderId"] == order_id
    assert listing.status_code == 200 and [o["orderId"] for o in listing.json()["results"]] == [order_id]
    assert cancel.status_code == 200 and cancel.json()["status"] == "CANCELLED"
    assert cancel_again.status_code == 409 and cancel_again.json()["error"]["code"] == "INVALID_STATUS"
    assert Account.objects.get(user=user).balance == 1_000 == ledger_balance(user_id=user.id)
    assert Coupon.objects.get(code="FIVE").times_used == 0
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 10}
    assert on_hand_by_product()[product.id] == 10


def test_products_and_account_endpoints_show_live_values(shop):
    user, client, product, other = shop
    client.post("/api/v1/orders", order_body(user, (product, 3)), format="json")

    listing = client.get("/api/v1/products").json()["results"]
    detail = client.get(f"/api/v1/products/{product.id}").json()
    me = client.get("/api/v1/accounts/me").json()

    assert listing == [
        {"productId": product.id, "name": "Widget", "price": 100, "stock": 7},
        {"productId": other.id, "name": "Gadget", "price": 250, "stock": 5},
    ]
    assert detail == {"productId": product.id, "name": "Widget", "price": 100, "stock": 7}
    assert me == {"userId": user.id, "balance": 700}


def test_another_users_order_is_not_found(shop):
    user, client, product, _ = shop
    order_id = client.post("/api/v1/orders", order_body(user, (product, 1)), format="json").json()["orderId"]
    stranger = client_for(make_user())

    assert stranger.get(f"/api/v1/orders/{order_id}").json()["error"]["code"] == "NOT_FOUND"
    assert stranger.post(f"/api/v1/orders/{order_id}/cancel").status_code == 404


def test_health_and_readiness_and_docs_answer_without_auth():
    client = APIClient()
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"postgres": "ok", "redis": "ok"}
    schema = client.get("/api/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200 and "/api/v1/orders" in orjson.loads(schema.content)["paths"]
    document = orjson.loads(schema.content)
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert document["paths"]["/api/v1/orders"]["post"]["security"] == [{"bearerAuth": []}]
    assert client.get("/api/docs").status_code == 200


@pytest.mark.parametrize(
    "accept, expected_status",
    [(None, 200), ("*/*", 200), ("application/json", 200), ("application/json; indent=4", 200), ("text/html", 406)],
)
def test_the_api_answers_json_to_json_clients_and_406_to_others(accept, expected_status):
    user = make_user(balance=5)
    headers = {"HTTP_ACCEPT": accept} if accept else {}
    answer = client_for(user).get("/api/v1/accounts/me", **headers)
    assert answer.status_code == expected_status
    assert answer["Content-Type"] == "application/json"
    if expected_status == 406:
        assert answer.json()["error"]["code"] == "NOT_ACCEPTABLE"
    else:
        assert answer.json() == {"userId": user.id, "balance": 5}


# --- Errors with their stable codes ----------------------------------------------------


def _post(client, body, **extra):
    return client.post("/api/v1/orders", body, format="json", **extra)


@pytest.mark.parametrize(
    "case, expected_status, expected_code",
    [
        ("out_of_stock", 409, "OUT_OF_STOCK"),
        ("insufficient_balance", 409, "INSUFFICIENT_BALANCE"),
        ("coupon_unknown", 409, "COUPON_INVALID"),
        ("coupon_expired", 409, "COUPON_INVALID"),
        ("coupon_min_amount", 409, "COUPON_INVALID"),
        ("coupon_only_whitespace", 409, "COUPON_INVALID"),  # a code as sent, as the schema says; not a 400
        ("price_changed", 409, "PRICE_CHANGED"),
        ("unknown_product", 404, "NOT_FOUND"),
        ("inactive_product", 409, "PRODUCT_UNAVAILABLE"),
        ("someone_else", 403, "FORBIDDEN"),
        ("no_token", 401, "UNAUTHENTICATED"),
        ("bad_token", 401, "UNAUTHENTICATED"),
    ],
)
def test_business_errors_have_stable_codes_and_change_nothing(shop, case, expected_status, expected_code):
    user, client, product, other = shop
    Coupon.objects.create(
        code="OLD", kind=Coupon.Kind.FIXED, value=5, valid_until=timezone.now() - datetime.timedelta(days=1)
    )
    Coupon.objects.create(code="BIG", kind=Coupon.Kind.FIXED, value=5, min_order_amount=10_000)
    body = order_body(user, (product, 1))
    if case == "out_of_stock":
        body = order_body(user, (product, 1), (other, 6))
    elif case == "insufficient_balance":
        body = order_body(user, (other, 5))
    elif case == "coupon_unknown":
        body["couponCode"] = "NOPE"
    elif case == "coupon_expired":
        body["couponCode"] = "OLD"
    elif case == "coupon_min_amount":
        body["couponCode"] = "BIG"
    elif case == "coupon_only_whitespace":
        body["couponCode"] = "  "
    elif case == "price_changed":
        body["orderItems"][0]["price"] = 99
    elif case == "unknown_product":
        body["orderItems"][0]["productId"] = 999_999
    elif case == "inactive_product":
        product_update(product=product, active=False)
    elif case == "someone_else":
        body["userId"] = make_user().id
    elif case == "no_token":
        client = APIClient()
    elif case == "bad_token":
        client = APIClient(HTTP_AUTHORIZATION="Bearer not-a-token")
    before = state_fingerprint()

    response = _post(client, body)

    assert response.status_code == expected_status, response.content
    error = response.json()["error"]
    assert error["code"] == expected_code and error["message"] and isinstance(error["details"], dict)
    assert state_fingerprint() == before


@pytest.mark.parametrize(
    "case, expected_status, expected_code",
    [
        ("price_changed", 409, "PRICE_CHANGED"),
        ("unknown_product", 404, "NOT_FOUND"),
        ("inactive_product", 409, "PRODUCT_UNAVAILABLE"),
        ("out_of_stock_and_price_changed", 409, "PRICE_CHANGED"),
    ],
)
@pytest.mark.parametrize("prefer", [None, "respond-async"])
def test_the_one_statement_order_checks_its_quoted_prices_first(shop, case, expected_status, expected_code, prefer):
    """The usual order checks prices in its own statement, after the reservation: the errors
    are still those of a price read first, and the reservation goes back."""
    user, client, product, other = shop
    body = order_body(user, (product, 1), (other, 1))
    if case == "price_changed":
        body["orderItems"][1]["price"] = 249
    elif case == "unknown_product":
        body["orderItems"][1]["productId"] = 999_999
    elif case == "inactive_product":
        product_update(product=other, active=False)
    elif case == "out_of_stock_and_price_changed":
        body = order_body(user, (product, 1), (other, 6))
        body["orderItems"][1]["price"] = 249
    before = state_fingerprint()

    response = _post(client, body, **({"HTTP_PREFER": prefer} if prefer else {}))

    assert response.status_code == expected_status, response.content
    assert response.json()["error"]["code"] == expected_code
    assert state_fingerprint() == before


def test_out_of_stock_names_the_item_that_failed(shop):
    user, client, product, other = shop
    error = _post(client, order_body(user, (product, 1), (other, 6))).json()["error"]
    assert error["details"] == {"productId": other.id, "requested": 6, "available": 5}


def test_lines_of_one_product_are_bounded_by_their_sum_and_nothing_is_reserved():
    """100 lines of 10,000, each within the per-line bound, used to order a million units."""
    user = make_user(balance=10**9)
    client = client_for(user)
    product = make_product(price=1, stock_quantity=2_000_000)
    other = make_product(price=1, stock_quantity=20_000, name="Gadget")
    limit = settings.MAX_ITEM_QUANTITY
    before = state_fingerprint()

    line = {"productId": product.id, "quantity": limit, "price": 1}
    for lines in ([line] * 100, [line, {**line, "quantity": 1}]):  # a million units; one over
        response = client.post("/api/v1/orders", {"userId": user.id, "orderItems": lines}, format="json")
        assert response.status_code == 400, response.content
        error = response.json()["error"]
        assert error["code"] == "VALIDATION_ERROR"
        assert str(product.id) in error["details"]["fields"]["orderItems"][0]
        assert state_fingerprint() == before

    # Exactly the bound, over several lines, and the bound again for another product: both taken.
    half = {**line, "quantity": limit // 2}
    body = {"userId": user.id, "orderItems": [half, half, {**line, "productId": other.id}]}
    assert client.post("/api/v1/orders", body, format="json").status_code == 201
    assert redis_counts.available(product_ids=[product.id, other.id]) == {
        product.id: 2_000_000 - limit,
        other.id: 10_000,
    }


def _huge_items(count):
    return [{"productId": 1, "quantity": 1, "price": 1}] * count


BAD_INPUT = [
    # name, raw body (bytes) or JSON-able, content type, expected status, expected code
    ("malformed json", b'{"userId": 1, "orderItems": [', "application/json", 400, "VALIDATION_ERROR"),
    ("not an object", b"[1, 2, 3]", "application/json", 400, "VALIDATION_ERROR"),
    ("empty body", b"", "application/json", 400, "VALIDATION_ERROR"),
    ("userId as string", {"userId": "USER", "orderItems": "ITEMS"}, None, 400, "VALIDATION_ERROR"),
    ("quantity as string", {"q": "2"}, None, 400, "VALIDATION_ERROR"),
    ("quantity as float", {"q": 2.5}, None, 400, "VALIDATION_ERROR"),
    ("quantity as bool", {"q": True}, None, 400, "VALIDATION_ERROR"),
    ("price as string", {"price": "100"}, None, 400, "VALIDATION_ERROR"),
    ("zero quantity", {"q": 0}, None, 400, "VALIDATION_ERROR"),
    ("negative quantity", {"q": -3}, None, 400, "VALIDATION_ERROR"),
    ("huge quantity", {"q": 10**30}, None, 400, "VALIDATION_ERROR"),
    ("negative price", {"price": -1}, None, 400, "VALIDATION_ERROR"),
    ("zero items", {"items": []}, None, 400, "VALIDATION_ERROR"),
    ("1000 items", {"items": "many"}, None, 400, "VALIDATION_ERROR"),
    ("items not a list", {"items": {"productId": 1}}, None, 400, "VALIDATION_ERROR"),
    ("missing orderItems", {"drop": "orderItems"}, None, 400, "VALIDATION_ERROR"),
    ("missing userId", {"drop": "userId"}, None, 400, "VALIDATION_ERROR"),
    ("missing quantity", {"drop_item": "quantity"}, None, 400, "VALIDATION_ERROR"),
    ("missing price", {"drop_item": "price"}, None, 400, "VALIDATION_ERROR"),
    ("unknown product id", {"productId": 424242}, None, 404, "NOT_FOUND"),
    ("product id zero", {"productId": 0}, None, 400, "VALIDATION_ERROR"),
    # Past 2**53 a Lua number (a double) no longer holds every integer: no id may go through one
    ("product id past doubles", {"productId": 2**53 + 1}, None, 404, "NOT_FOUND"),
    ("largest bigint product id", {"productId": 2**63 - 1}, None, 404, "NOT_FOUND"),
    ("product id just past bigint", {"productId": 2**63}, None, 400, "VALIDATION_ERROR"),
    ("product id beyond bigint", {"productId": 2**64}, None, 400, "VALIDATION_ERROR"),
    ("userId beyond bigint", {"userId": 2**70}, None, 400, "VALIDATION_ERROR"),
    ("coupon not a string", {"couponCode": 12}, None, 400, "VALIDATION_ERROR"),
    ("wrong content type", b"userId=1", "application/x-www-form-urlencoded", 415, "UNSUPPORTED_MEDIA_TYPE"),
    ("text content type", b'{"userId": 1}', "text/plain", 415, "UNSUPPORTED_MEDIA_TYPE"),
    ("1 MB body", b'{"pad": "' + b"x" * 1_000_000 + b'"}', "application/json", 413, "PAYLOAD_TOO_LARGE"),
]


def _bad_body(user, product, spec):
    if isinstance(spec, bytes):
        return spec
    body = order_body(user, (product, 1))
    item = body["orderItems"][0]
    for key, value in spec.items():
        if key == "q":
            item["quantity"] = value
        elif key in ("price", "productId"):
            item[key] = value
        elif key == "items":
            body["orderItems"] = _huge_items(1000) if value == "many" else value
        elif key == "drop":
            del body[value]
        elif key == "drop_item":
            del item[value]
        else:
            body[key] = value
    return json.dumps(body).encode()  # stdlib: orjson refuses the beyond-64-bit numbers we send


@pytest.mark.parametrize("name, spec, content_type, expected_status, expected_code", BAD_INPUT)
@pytest.mark.parametrize("prefer", [None, "respond-async"])
def test_bad_input_is_a_4xx_with_its_code_and_changes_nothing(
    shop, name, spec, content_type, expected_status, expected_code, prefer
):
    user, client, product, _ = shop
    before = state_fingerprint()

    response = client.post(
        "/api/v1/orders",
        _bad_body(user, product, spec),
        content_type=content_type or "application/json",
        **({"HTTP_PREFER": prefer} if prefer else {}),
    )

    assert response.status_code == expected_status, (name, response.content)
    assert response.json()["error"]["code"] == expected_code
    assert state_fingerprint() == before


@pytest.mark.parametrize(
    "method, path, expected_status, expected_code",
    [
        ("get", "/api/v1/orders/99999999", 404, "NOT_FOUND"),
        ("get", "/api/v1/orders/99999999999999999999999", 404, "NOT_FOUND"),
        ("get", "/api/v1/orders/abc", 404, "NOT_FOUND"),
        ("post", "/api/v1/orders/99999999/cancel", 404, "NOT_FOUND"),
        ("get", "/api/v1/products/99999999", 404, "NOT_FOUND"),
        ("get", "/api/v1/nothing-here", 404, "NOT_FOUND"),
        ("delete", "/api/v1/orders", 405, "METHOD_NOT_ALLOWED"),
        ("put", "/api/v1/products", 405, "METHOD_NOT_ALLOWED"),
    ],
)
def test_unknown_resources_and_methods_answer_json_errors(shop, method, path, expected_status, expected_code):
    _, client, _, _ = shop
    response = getattr(client, method)(path)
    assert response.status_code == expected_status
    assert response.json()["error"]["code"] == expected_code


# --- Idempotency-Key -------------------------------------------------------------------


def test_same_idempotency_key_replays_the_first_answer_and_orders_once(shop):
    user, client, product, _ = shop
    body = order_body(user, (product, 2))
    first = _post(client, body, HTTP_IDEMPOTENCY_KEY="abc-1")
    second = _post(client, body, HTTP_IDEMPOTENCY_KEY="abc-1")

    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1
    assert Account.objects.get(user=user).balance == 800


def test_idempotency_key_replays_an_error_answer_too(shop):
    user, client, _, other = shop
    body = order_body(user, (other, 5))  # 1,250 against a balance of 1,000
    first = _post(client, body, HTTP_IDEMPOTENCY_KEY="k")
    account_change_balance(user_id=user.id, amount=1_000, kind=BalanceEntry.Kind.TOP_UP)  # the key's answer stands
    second = _post(client, body, HTTP_IDEMPOTENCY_KEY="k")

    assert first.status_code == second.status_code == 409
    assert first.json()["error"]["code"] == "INSUFFICIENT_BALANCE"
    assert first.json() == second.json()
    assert Order.objects.count() == 0


def test_idempotency_key_with_a_different_body_is_refused(shop):
    user, client, product, _ = shop
    _post(client, order_body(user, (product, 1)), HTTP_IDEMPOTENCY_KEY="k2")
    response = _post(client, order_body(user, (product, 2)), HTTP_IDEMPOTENCY_KEY="k2")

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert Order.objects.count() == 1


def test_the_same_key_from_another_user_is_another_order(shop):
    user, client, product, _ = shop
    other_user = make_user()
    _post(client, order_body(user, (product, 1)), HTTP_IDEMPOTENCY_KEY="shared")
    response = _post(client_for(other_user), order_body(other_user, (product, 1)), HTTP_IDEMPOTENCY_KEY="shared")

    assert response.status_code == 201
    assert Order.objects.count() == 2


# --- Backing services down: 503, nothing changed ---------------------------------------


def test_redis_down_answers_503_and_changes_nothing(shop, settings):
    user, client, product, _ = shop
    before = state_fingerprint()
    dead = dict(settings.CACHES["default"], LOCATION="redis://127.0.0.1:1/0")
    with override_settings(CACHES={"default": dead}):
        response = _post(client, order_body(user, (product, 1)))

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert state_fingerprint() == before


def test_postgres_down_answers_503_and_reconciliation_gives_the_reservation_back(shop):
    user, client, product, _ = shop
    token = client._credentials["HTTP_AUTHORIZATION"]
    before = state_fingerprint()
    real_port = connection.settings_dict["PORT"]
    # Authenticate first: the failure must hit the order path itself, after the reservation.
    from orders import services

    original = services._run_fenced  # the order's one statement, after the reservation

    def database_goes_away(sql, params):
        connection.close()
        connection.settings_dict["PORT"] = "1"
        return original(sql, params)

    services._run_fenced = database_goes_away
    try:
        response = APIClient(HTTP_AUTHORIZATION=token).post(
            "/api/v1/orders", order_body(user, (product, 1)), format="json"
        )
    finally:
        services._run_fenced = original
        connection.settings_dict["PORT"] = real_port
        connection.close()

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    # The database could not say whether the sale committed, so the units stay held until
    # reconciliation settles the reservation; then everything is as before.
    assert redis_counts.available(product_ids=[product.id])[product.id] == 9
    inventory_reconcile(grace_seconds=0)
    assert state_fingerprint() == before


def test_the_rendered_order_has_exactly_the_documented_fields(shop):
    from orders.serializers import OrderDetailOutputSerializer, OrderItemOutputSerializer

    user, client, product, _ = shop
    order_id = _post(client, order_body(user, (product, 1))).json()["orderId"]
    detail = client.get(f"/api/v1/orders/{order_id}").json()

    assert set(detail) == set(OrderDetailOutputSerializer().fields)
    assert set(detail["items"][0]) == set(OrderItemOutputSerializer().fields)
    assert set(detail["progress"][0]) == {"step", "at"}


def test_a_503_is_not_remembered_for_the_key_so_the_retry_orders(shop, settings):
    user, client, product, _ = shop
    dead = dict(settings.CACHES["default"], LOCATION="redis://127.0.0.1:1/0")
    with override_settings(CACHES={"default": dead}):
        first = _post(client, order_body(user, (product, 1)), HTTP_IDEMPOTENCY_KEY="retry-me")
    second = _post(client, order_body(user, (product, 1)), HTTP_IDEMPOTENCY_KEY="retry-me")

    assert (first.status_code, second.status_code) == (503, 201)
    assert Order.objects.count() == 1


def test_a_key_left_in_progress_by_a_crashed_request_is_taken_over_once_stale(shop, settings):
    from orders.models import IdempotencyRecord

    user, client, product, _ = shop
    settings.IDEMPOTENCY_WAIT_SECONDS = 0.2
    IdempotencyRecord.objects.create(
        user_id=user.id, key="orphan", request_fingerprint=request_fingerprint(order_body(user, (product, 1))),
        status_code=0, response_body={},
    )  # fmt: skip
    waiting = _post(client, order_body(user, (product, 1)), HTTP_IDEMPOTENCY_KEY="orphan")
    IdempotencyRecord.objects.filter(key="orphan").update(
        created_at=timezone.now() - datetime.timedelta(seconds=settings.IDEMPOTENCY_STALE_SECONDS + 1)
    )
    taken_over = _post(client, order_body(user, (product, 1)), HTTP_IDEMPOTENCY_KEY="orphan")

    assert waiting.status_code == 409 and waiting.json()["error"]["code"] == "CONFLICT"
    assert taken_over.status_code == 201 and Order.objects.count() == 1
