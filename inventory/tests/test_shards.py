"""Stock on several shards (STOCK_SHARDS=3 on one Redis; the same code runs on a Redis Cluster,
inventory/tests/test_cluster.py): an order across shards holds units on each under one token,
all or nothing, and reconciliation settles each shard's part."""

from __future__ import annotations

from collections import Counter

import pytest

from devtools.testing import client_for, make_product, make_user, order_body, race
from inventory import models, redis_counts
from inventory.errors import OutOfStock, ReservationLost
from inventory.reconciliation import inventory_reconcile, on_hand_by_product
from inventory.reservations import stock_epoch
from inventory.services import stock_record_sale, stock_reserve
from inventory.shards import shard_of
from orders.models import Order, OrderStatus
from orders.services import order_cancel

pytestmark = pytest.mark.django_db(transaction=True)


def three_products_on_three_shards(stock: int = 10) -> list[models.Product]:
    products = [make_product(price=10, stock_quantity=stock) for _ in range(3)]
    assert len({shard_of(p.id) for p in products}) == 3
    return products


def tracked(shard, token) -> bool:
    return redis_counts.redis_client().zscore(shard.reservations_key, str(token)) is not None


def test_each_shards_keys_carry_its_own_hash_tag_so_one_script_reaches_them_all(sharded_stock):
    for shard in sharded_stock:
        keys = [shard.stock_key(7), shard.ready_key, shard.epoch_key, shard.reservations_key,
                shard.reservation_key("t"), shard.price_key(7), shard.moves_key]  # fmt: skip
        assert all(f"{{{shard.tag}}}" in key for key in keys)
    assert len({shard.tag for shard in sharded_stock}) == 3


def test_an_order_across_three_shards_holds_units_on_each_and_is_paid_once(sharded_stock):
    a, b, c = three_products_on_three_shards()
    buyer = make_user(balance=1_000)

    response = client_for(buyer).post("/api/v1/orders", order_body(buyer, (a, 1), (b, 2), (c, 3)), format="json")

    assert response.status_code == 201, response.content
    order = Order.objects.get(pk=response.json()["orderId"])
    assert order.status == OrderStatus.PAID and order.total_amount == 60
    assert redis_counts.available(product_ids=[a.id, b.id, c.id]) == {a.id: 9, b.id: 8, c.id: 7}
    assert all(tracked(shard, order.reservation_token) for shard in sharded_stock)
    report = inventory_reconcile()
    assert report.drifted == [] and report.forgotten_tokens == 1  # one token, seen on three shards
    assert not any(tracked(shard, order.reservation_token) for shard in sharded_stock)
    assert on_hand_by_product() == {a.id: 9, b.id: 8, c.id: 7}


def test_a_refusal_on_one_shard_gives_back_what_the_shards_before_it_held(sharded_stock):
    a, b, c = three_products_on_three_shards()
    redis_counts.add_available(product_id=c.id, quantity=-10)  # c sold out (in Redis only: the test's)

    with pytest.raises(OutOfStock) as refusal:
        stock_reserve(quantities={a.id: 4, b.id: 4, c.id: 1}, holder=None)

    assert refusal.value.details["productId"] == c.id
    assert redis_counts.available(product_ids=[a.id, b.id]) == {a.id: 10, b.id: 10}
    assert redis_counts.tracked_reservations() == 0


def test_holds_left_by_a_crash_between_two_shards_are_given_back_by_reconciliation(sharded_stock):
    a, b, _ = three_products_on_three_shards()
    reservation = stock_reserve(quantities={a.id: 3, b.id: 2})  # the order's process dies here

    assert inventory_reconcile(grace_seconds=0).released_tokens == [str(reservation.token)] * 2  # a part per shard
    assert redis_counts.available(product_ids=[a.id, b.id]) == {a.id: 10, b.id: 10}
    assert models.StockReservation.objects.get(token=reservation.token).state == models.StockReservation.State.RELEASED
    with pytest.raises(ReservationLost):  # and the late order can no longer record its sale
        stock_record_sale(reservation=reservation, quantities={a.id: 3, b.id: 2}, reference="late")


def test_a_rebuild_of_one_shard_fences_off_its_reservations_and_leaves_the_others(sharded_stock):
    a, b, _ = three_products_on_three_shards()
    on_a = stock_reserve(quantities={a.id: 1})
    on_b = stock_reserve(quantities={b.id: 1})
    across = stock_reserve(quantities={a.id: 1, b.id: 1})
    lost, kept = shard_of(b.id), shard_of(a.id)
    epoch_kept = stock_epoch(kept)
    redis_counts.redis_client().delete(lost.ready_key)  # b's shard failed over: its master's data is in doubt

    report = inventory_reconcile()

    assert report.rebuilt_shards == [lost.tag] and stock_epoch(kept) == epoch_kept
    stock_record_sale(reservation=on_a, quantities={a.id: 1}, reference="kept")  # its shard's epoch holds
    for fenced, quantities in ((on_b, {b.id: 1}), (across, {a.id: 1, b.id: 1})):
        with pytest.raises(ReservationLost):
            stock_record_sale(reservation=fenced, quantities=quantities, reference="fenced")
    assert redis_counts.is_loaded(lost)
    # Rebuilt from the ledger, less the two holds the shard still tracks: fenced off, they can
    # never be sold, and go back after the grace period like any abandoned one.
    assert redis_counts.available(product_ids=[b.id]) == {b.id: 8}
    inventory_reconcile(grace_seconds=0)
    assert redis_counts.available(product_ids=[a.id, b.id]) == {a.id: 9, b.id: 10}
    assert on_hand_by_product()[a.id] == 9 and on_hand_by_product()[b.id] == 10


def test_a_return_across_shards_is_acknowledged_only_once_every_shard_has_applied_it(sharded_stock):
    a, b, _ = three_products_on_three_shards()
    buyer = make_user(balance=1_000)
    paid = client_for(buyer).post("/api/v1/orders", order_body(buyer, (a, 2), (b, 3)), format="json").json()
    order_cancel(order_id=paid["orderId"], user_id=buyer.id)  # the return applied on both shards at once
    move = str(models.StockMovement.objects.get(kind=models.StockMovement.Kind.RETURN, product=a).move_token)
    b_shard = shard_of(b.id)
    client = redis_counts.redis_client()  # undo b's part: as if its step had not reached b's shard yet
    client.delete(redis_counts.move_key(move, shard=b_shard))
    client.srem(b_shard.moves_key, move)
    redis_counts.add_available(product_id=b.id, quantity=-3)

    inventory_reconcile()

    assert redis_counts.available(product_ids=[a.id, b.id]) == {a.id: 10, b.id: 10}  # b's part applied
    assert models.PendingMove.objects.filter(token=move).exists()  # not acknowledged while b's part was missing
    inventory_reconcile()
    assert not models.PendingMove.objects.filter(token=move).exists()
    assert redis_counts.apply_moves(moves={move: redis_counts.Units(items={a.id: 2, b.id: 3}, holder=buyer.id)}) == 0
    assert redis_counts.available(product_ids=[a.id, b.id]) == {a.id: 10, b.id: 10}  # a late copy: nothing


def test_forty_buyers_racing_for_the_last_ten_pairs_across_two_shards_never_oversell(sharded_stock):
    a, b, _ = three_products_on_three_shards(stock=10)
    buyers = [make_user(balance=100) for _ in range(40)]
    clients = [client_for(buyer) for buyer in buyers]

    responses = race(40, lambda i: clients[i].post("/api/v1/orders", order_body(buyers[i], (a, 1), (b, 1)),
                                                   format="json"))  # fmt: skip

    assert Counter(r.status_code for r in responses) == {201: 10, 409: 30}
    assert redis_counts.available(product_ids=[a.id, b.id]) == {a.id: 0, b.id: 0}
    assert inventory_reconcile(grace_seconds=0).drifted == []
    on_hand = on_hand_by_product()
    assert on_hand[a.id] == on_hand[b.id] == 0
    assert Order.objects.filter(status=OrderStatus.PAID).count() == 10


def test_a_layout_that_serves_again_after_another_sold_is_rebuilt_not_trusted(settings):
    settings.STOCK_SHARDS = 3
    product = make_product(price=1, stock_quantity=10)
    buyer = make_user(balance=1_000)
    client = client_for(buyer)

    def order(units: int) -> int:
        return client.post("/api/v1/orders", order_body(buyer, (product, units)), format="json").status_code

    inventory_reconcile()  # the three shards loaded from the ledger
    assert order(2) == 201  # three shards: 8 left
    settings.STOCK_SHARDS = 1  # the service restarted on one shard...
    inventory_reconcile()
    assert order(5) == 201  # ...which sold 5 more: 3 left
    settings.STOCK_SHARDS = 3  # and back: the three shards' keys still say 8, as this server run's

    assert order(8) == 503  # reserved on the stale count, but its epoch is fenced: nothing sold
    report = inventory_reconcile()

    assert shard_of(product.id).tag in report.rebuilt_shards
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 3}
    assert order(4) == 409 and order(3) == 201
    assert on_hand_by_product() == {product.id: 0}
