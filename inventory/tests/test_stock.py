"""The Lua reservation: all items or none, released at most once."""

import pytest

from devtools.testing import make_product
from inventory import redis_counts
from inventory.errors import OutOfStock, PurchaseLimitReached, StockNotLoaded
from inventory.reconciliation import on_hand_by_product
from inventory.reservations import stock_epoch
from inventory.services import stock_adjust, stock_release, stock_reserve
from inventory.shards import stock_shards

(ONLY_SHARD,) = stock_shards()  # these tests run on one Redis, one shard

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_reservation_takes_every_item_or_none_and_names_the_one_that_failed():
    a, b = make_product(stock_quantity=5), make_product(stock_quantity=2)

    with pytest.raises(OutOfStock) as failure:
        stock_reserve(quantities={a.id: 3, b.id: 3})

    assert failure.value.details == {"productId": b.id, "requested": 3, "available": 2}
    assert redis_counts.available(product_ids=[a.id, b.id]) == {a.id: 5, b.id: 2}
    stock_reserve(quantities={a.id: 3, b.id: 2})
    assert redis_counts.available(product_ids=[a.id, b.id]) == {a.id: 2, b.id: 0}


@pytest.mark.parametrize("product_id", [2**53 + 1, 2**63 - 1])
def test_a_refusal_names_a_bigint_product_id_exactly(product_id):
    """Ids past 2**53 are not exact as Lua numbers (doubles): the script answers them as sent."""
    with pytest.raises(OutOfStock) as out:
        stock_reserve(quantities={product_id: 1})
    redis_counts.add_available(product_id=product_id, quantity=5)
    redis_counts.set_purchase_limit(product_id=product_id, limit=1)
    with pytest.raises(PurchaseLimitReached) as limited:
        stock_reserve(quantities={product_id: 2}, holder=7)

    assert out.value.details == {"productId": product_id, "requested": 1, "available": 0}
    assert limited.value.details == {"productId": product_id, "limit": 1, "alreadyHeld": 0, "requested": 2}


def test_releasing_twice_gives_the_units_back_once():
    a = make_product(stock_quantity=5)
    reservation = stock_reserve(quantities={a.id: 4})

    assert stock_release(reservation=reservation) is True
    assert stock_release(reservation=reservation) is False
    assert redis_counts.available(product_ids=[a.id]) == {a.id: 5}


def test_stock_loaded_by_another_run_of_the_redis_server_does_not_count_as_loaded():
    a = make_product(stock_quantity=5)
    redis_counts.redis_client().set(ONLY_SHARD.ready_key, "0123456789abcdef")  # as replayed after a restart

    assert not redis_counts.is_loaded(ONLY_SHARD)
    with pytest.raises(StockNotLoaded):
        stock_reserve(quantities={a.id: 1})
    assert redis_counts.is_loaded(ONLY_SHARD)  # the refusal rebuilt it


def test_a_repair_computed_before_a_restart_leaves_stock_not_loaded():
    redis_counts.mark_not_loaded()

    assert (
        redis_counts.repair(
            ONLY_SHARD, drifts={}, forget_tokens=[], run_id="0123456789abcdef", epoch=stock_epoch(ONLY_SHARD)
        )
        is False
    )
    assert not redis_counts.is_loaded(ONLY_SHARD)
    assert (
        redis_counts.repair(
            ONLY_SHARD,
            drifts={},
            forget_tokens=[],
            run_id=redis_counts.server_run_id(ONLY_SHARD),
            epoch=stock_epoch(ONLY_SHARD),
        )
        is True
    )
    assert redis_counts.is_loaded(ONLY_SHARD)


def test_reserving_before_stock_is_loaded_is_refused():
    a = make_product(stock_quantity=5)
    redis_counts.mark_not_loaded()
    redis_counts.redis_client().delete(redis_counts.stock_key(a.id))

    with pytest.raises(StockNotLoaded):
        stock_reserve(quantities={a.id: 1})
    # the refusal triggered the rebuild: the next reservation works
    stock_reserve(quantities={a.id: 1})
    assert redis_counts.available(product_ids=[a.id]) == {a.id: 4}


def test_admin_adjustments_write_the_ledger_and_redis_and_never_take_held_units():
    a = make_product(stock_quantity=5)
    stock_reserve(quantities={a.id: 4})

    stock_adjust(product=a, quantity=10, reason="delivery")
    assert (redis_counts.available(product_ids=[a.id])[a.id], on_hand_by_product()[a.id]) == (11, 15)
    stock_adjust(product=a, quantity=-11, reason="damaged")
    assert (redis_counts.available(product_ids=[a.id])[a.id], on_hand_by_product()[a.id]) == (0, 4)
    with pytest.raises(OutOfStock):
        stock_adjust(product=a, quantity=-1, reason="more than is free")
