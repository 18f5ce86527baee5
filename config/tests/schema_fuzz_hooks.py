"""schemathesis hooks for config/tests/test_schema_fuzz.py: some requests name data that exists.

Drawn at random, every id names nothing: each order would be refused for its userId or an
unknown product, and the answers the business gives (201, 202 with Location, 409 for a changed
price, an order cancelled twice ...) would never be checked. These hooks put the ids the test
made in place of some drawn ones: the caller (SCHEMA_FUZZ_USER_ID), its products
(SCHEMA_FUZZ_PRODUCTS, `id:price,...`) and orders (SCHEMA_FUZZ_ORDERS, `id,...`). A value is
replaced only when it is valid already, by another valid one, so a request the fuzzer made
invalid stays invalid; which values are replaced follows from the drawn values themselves, so a
deterministic run sends the same requests every time.
"""

from __future__ import annotations

import os

import schemathesis

ORDERS_PATH = "/api/v1/orders"


def _ids(name: str) -> list[int]:
    return [int(value) for value in os.environ.get(name, "").split(",") if value]


USER_ID = int(os.environ.get("SCHEMA_FUZZ_USER_ID", "0"))
PRODUCTS = [tuple(map(int, pair.split(":"))) for pair in os.environ.get("SCHEMA_FUZZ_PRODUCTS", "").split(",") if pair]
IDS_IN_PATHS = {"orderId": _ids("SCHEMA_FUZZ_ORDERS"), "productId": [product_id for product_id, _ in PRODUCTS]}


def _positive_int(value: object) -> bool:
    return type(value) is int and value >= 1


def _pick(drawn: int, choices: list) -> object | None:
    """One of `choices` for most drawn values, None (keep the drawn one) for the rest."""
    index = drawn % (len(choices) + 1)
    return choices[index] if index < len(choices) else None


@schemathesis.hook
def map_body(context, body):
    operation = context.operation
    if operation is None or (operation.method.upper(), operation.path) != ("POST", ORDERS_PATH):
        return body
    if not isinstance(body, dict):
        return body
    body = dict(body)
    if USER_ID and _positive_int(body.get("userId")) and body["userId"] % 4:  # else someone else's: 403
        body["userId"] = USER_ID
    if isinstance(body.get("orderItems"), list):
        body["orderItems"] = [_item(item) for item in body["orderItems"]]
    return body


def _item(item: object) -> object:
    if not isinstance(item, dict) or not _positive_int(item.get("productId")):
        return item
    product = _pick(item["productId"], PRODUCTS)
    if product is None:  # an unknown product: 404
        return item
    item = {**item, "productId": product[0]}
    price = item.get("price")
    if type(price) is int and price >= 0 and price % 7 != 1:  # else a price the caller saw wrong: 409
        item["price"] = product[1]
    return item


@schemathesis.hook
def map_headers(context, headers):
    operation = context.operation
    if operation is None or (operation.method.upper(), operation.path) != ("POST", ORDERS_PATH) or not headers:
        return headers
    prefer = headers.get("Prefer")
    if isinstance(prefer, str) and len(prefer) % 2 == 0:  # else a preference the server ignores: 201
        headers = {**headers, "Prefer": "respond-async"}
    return headers


@schemathesis.hook
def map_path_parameters(context, path_parameters):
    if not path_parameters:
        return path_parameters
    mapped = dict(path_parameters)
    for name, ids in IDS_IN_PATHS.items():
        if ids and _positive_int(mapped.get(name)):
            picked = _pick(mapped[name], ids)
            if picked is not None:
                mapped[name] = picked
    return mapped
