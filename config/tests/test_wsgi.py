"""The application gunicorn serves: the API through its own short chain, pages through the full one."""

from __future__ import annotations

import io
import wsgiref.util

import orjson
import pytest
from django.conf import settings

from accounts.services import token_create
from config.wsgi import ApiHandler, application
from devtools.testing import make_product, make_user, order_body
from orders.models import Order

pytestmark = pytest.mark.django_db(transaction=True)


def _call(method: str, path: str, *, body: bytes = b"", headers: dict[str, str] | None = None):
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "wsgi.input": io.BytesIO(body)}
    wsgiref.util.setup_testing_defaults(environ)
    environ["CONTENT_LENGTH"] = str(len(body))
    environ["CONTENT_TYPE"] = "application/json"
    environ.update({f"HTTP_{k.upper().replace('-', '_')}": v for k, v in (headers or {}).items()})
    answer = {}

    def start_response(status, response_headers, exc_info=None):
        answer["status"] = int(status.split()[0])
        answer["headers"] = {k.lower(): v for k, v in response_headers}

    answer["body"] = b"".join(application(environ, start_response))
    return answer


def _middleware_names(handler) -> list[str]:
    """The dotted paths of the middleware a built handler runs, outermost first (each is wrapped
    by Django's convert_exception_to_response, which keeps it as __wrapped__)."""
    names, layer = [], handler._middleware_chain
    while hasattr(layer := getattr(layer, "__wrapped__", layer), "get_response"):
        names.append(f"{type(layer).__module__}.{type(layer).__qualname__}")
        layer = layer.get_response
    return names


def test_the_api_chain_is_the_full_chain_without_what_only_pages_use():
    assert set(settings.API_MIDDLEWARE) < set(settings.MIDDLEWARE)
    assert [m for m in settings.MIDDLEWARE if m in settings.API_MIDDLEWARE] == settings.API_MIDDLEWARE
    assert not {m for m in settings.API_MIDDLEWARE if "sessions" in m or "csrf" in m or "messages" in m}
    chain = ApiHandler()
    assert settings.MIDDLEWARE != settings.API_MIDDLEWARE  # building it left the settings as they were
    # The chain it built runs exactly the API middleware, outermost first.
    assert _middleware_names(chain) == settings.API_MIDDLEWARE


def test_an_order_through_the_api_chain_is_placed_with_its_headers_and_no_cookie():
    user = make_user(balance=100)
    product = make_product(price=10, stock_quantity=5)
    answer = _call(
        "POST",
        "/api/v1/orders",
        body=orjson.dumps(order_body(user, (product, 2))),
        headers={"Authorization": f"Bearer {token_create(user=user).key}", "X-Request-ID": "order-7"},
    )
    assert answer["status"] == 201, answer["body"]
    assert orjson.loads(answer["body"])["paidAmount"] == 20
    assert Order.objects.get().paid_amount == 20
    assert answer["headers"]["x-request-id"] == "order-7"
    assert "default-src 'none'" in answer["headers"]["content-security-policy"]
    assert answer["headers"]["content-length"] == str(len(answer["body"]))
    assert "set-cookie" not in answer["headers"] and "x-frame-options" not in answer["headers"]


def test_api_errors_still_answer_json_through_the_api_chain():
    unknown = _call("GET", "/api/v1/nothing-here")
    assert unknown["status"] == 404 and orjson.loads(unknown["body"])["error"]["code"] == "NOT_FOUND"
    big = _call("POST", "/api/v1/orders", body=b"x" * (settings.MAX_REQUEST_BYTES + 1))
    assert big["status"] == 413 and orjson.loads(big["body"])["error"]["code"] == "PAYLOAD_TOO_LARGE"
    anonymous = _call("POST", "/api/v1/orders", body=b"{}")
    assert anonymous["status"] == 401 and orjson.loads(anonymous["body"])["error"]["code"] == "UNAUTHENTICATED"


def test_pages_keep_the_full_chain():
    login = _call("GET", "/admin/login/")
    assert login["status"] == 200
    assert login["headers"]["x-frame-options"] == "DENY"
    assert "csrftoken" in login["headers"].get("set-cookie", "")
