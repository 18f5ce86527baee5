"""The order input's fast path answers exactly as OrderInputSerializer does."""

from __future__ import annotations

import random

import pytest
from rest_framework.exceptions import ValidationError

from orders.serializers import MAX_ID, MAX_ITEM_QUANTITY, MAX_ORDER_ITEMS, OrderInputSerializer, order_input_validate

# Values around every bound of every field, and values of the wrong JSON type.
INTEGERS = [0, 1, 2, 5, -1, MAX_ITEM_QUANTITY, MAX_ITEM_QUANTITY + 1, MAX_ID, MAX_ID + 1, 10**30]
OTHERS = [None, True, False, 1.0, 2.5, "1", "", [], {}, [1], {"a": 1}]
COUPONS = [None, "", " ", "SALE", " SALE", "SALE ", "A" * 64, "A" * 65, "\x00", "SA\x00LE", 7, True, [], {}]
MISSING = object()


def _pick(rng: random.Random, values: list) -> object:
    return rng.choice(values + [MISSING] * (len(values) // 8 + 1))


def _scalar(rng: random.Random) -> object:
    """Mostly a valid number, so that whole bodies are valid often enough."""
    roll = rng.random()
    if roll < 0.96:
        return rng.randint(1, 5)
    return _pick(rng, INTEGERS if roll < 0.99 else OTHERS)


def _item(rng: random.Random) -> object:
    if rng.random() < 0.05:
        return _pick(rng, OTHERS)
    item = {name: _scalar(rng) for name in ("productId", "quantity", "price")}
    if rng.random() < 0.1:
        item["extra"] = _scalar(rng)
    return {k: v for k, v in item.items() if v is not MISSING}


def _body(rng: random.Random) -> object:
    if rng.random() < 0.03:
        return _pick(rng, OTHERS)
    count = rng.choice([0, 1, 1, 2, 2, 3, 3, MAX_ORDER_ITEMS, MAX_ORDER_ITEMS + 1])
    items = [_item(rng) for _ in range(count)] if rng.random() < 0.95 else _pick(rng, OTHERS)
    body = {
        "userId": _scalar(rng),
        "orderItems": items,
        "couponCode": _pick(rng, COUPONS) if rng.random() < 0.3 else MISSING,
    }
    if rng.random() < 0.1:
        body["other"] = 1
    return {k: v for k, v in body.items() if v is not MISSING}


def _serializer_answer(body: object) -> tuple[bool, object]:
    serializer = OrderInputSerializer(data=body)
    if serializer.is_valid():
        return True, serializer.validated_data
    return False, serializer.errors


def _fast_path_answer(body: object) -> tuple[bool, object]:
    try:
        return True, order_input_validate(body)
    except ValidationError as error:
        return False, error.detail


def _plain(value: object) -> object:
    """ReturnDict / OrderedDict / ErrorDetail as plain values, for comparison."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, str) else value


def test_usual_orders_take_the_fast_path_with_the_serializers_result():
    body = {"userId": 7, "orderItems": [{"productId": 3, "quantity": 2, "price": 1, "note": "x"}]}
    assert order_input_validate(body) == {"userId": 7, "orderItems": [{"productId": 3, "quantity": 2, "price": 1}]}
    assert _plain(_serializer_answer(body)[1]) == order_input_validate(body)


@pytest.mark.parametrize("seed", range(4))
def test_fast_path_and_serializer_agree_on_generated_input(seed):
    rng = random.Random(seed)
    accepted = refused = 0
    for _ in range(1500):
        body = _body(rng)
        expected_ok, expected = _serializer_answer(body)
        ok, answer = _fast_path_answer(body)
        assert (ok, _plain(answer)) == (expected_ok, _plain(expected)), body
        accepted += ok
        refused += not ok
    # The generator must exercise both sides, or the comparison proves nothing.
    assert accepted > 50 and refused > 50
