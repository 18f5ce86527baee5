"""Returns and restocks meeting reconciliation (issue 19): each move reaches Redis once, whichever
side of reconciliation's two snapshots its commit and its Redis step land on.

A return or restock commits its ledger rows, then moves Redis after the commit. Reconciliation
takes the database snapshot first, then the Redis snapshot. The orderings are forced by hand:
the Redis step is held back (as a slow worker would hold it) and run at a chosen moment, and
the move itself is run from inside a reconciliation, between its two snapshots.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest
from django.db import transaction

from devtools.testing import make_product, make_user, race
from inventory import models, redis_counts
from inventory.errors import PurchaseLimitReached
from inventory.reconciliation import inventory_reconcile, on_hand_by_product
from inventory.services import product_create, product_purchase_limit_set, stock_adjust
from inventory.shards import stock_shards
from orders.services import OrderLine, order_cancel, order_place

(ONLY_SHARD,) = stock_shards()  # these tests run on one Redis, one shard

pytestmark = pytest.mark.django_db(transaction=True)


@contextlib.contextmanager
def redis_steps_held() -> Iterator[list[Callable[[], None]]]:
    """Commits go through; the Redis steps they schedule for after the commit are kept here
    instead, for the test to run when it chooses."""
    held: list[Callable[[], None]] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(transaction, "on_commit", lambda func, using=None, robust=False: held.append(func))
        yield held


def run_all(steps: list[Callable[[], None]]) -> None:
    assert steps, "the move scheduled no Redis step"
    for step in steps:
        step()


def in_another_session(action: Callable[[], object]) -> object:
    """Run `action` on its own thread and database connection (so it commits on its own, while
    this thread's reconciliation keeps its snapshot open), and wait for it."""
    return race(1, lambda _: action())[0]


def around_the_redis_snapshot(
    monkeypatch, *, before: Callable[[], object] | None = None, after: Callable[[], object] | None = None
):
    """Run `before` inside the next reconciliation after its database snapshot and just before
    its Redis snapshot, and `after` just after its Redis snapshot (before its repair)."""
    real = redis_counts.snapshot

    def snapshot(*args, **kwargs):
        monkeypatch.setattr(redis_counts, "snapshot", real)  # once
        if before is not None:
            before()
        taken = real(*args, **kwargs)
        if after is not None:
            after()
        return taken

    monkeypatch.setattr(redis_counts, "snapshot", snapshot)


def limited_product(limit: int, *, stock_quantity: int):
    product = make_product(price=10, stock_quantity=stock_quantity)
    product_purchase_limit_set(product=product, limit=limit)
    return product


def buy(user, product, quantity: int):
    return order_place(user_id=user.id, lines=[OrderLine(product.id, quantity, product.price)]).order


def nothing_left_pending() -> bool:
    """Every move acknowledged in the database and forgotten by Redis."""
    return not models.PendingMove.objects.exists() and not redis_counts.redis_client().scard(ONLY_SHARD.moves_key)


def assert_redis_matches_the_ledger(product) -> None:
    assert redis_counts.available(product_ids=[product.id]) == {product.id: on_hand_by_product()[product.id]}
    later = inventory_reconcile()
    assert later.drifted == [] and later.holding_drifts == {}
    assert redis_counts.available(product_ids=[product.id]) == {product.id: on_hand_by_product()[product.id]}
    assert nothing_left_pending()


@pytest.mark.parametrize("redis_step_lands", ["between the redis snapshot and the repair", "after the repair"])
def test_a_cancel_committed_before_the_database_snapshot_and_applied_after_the_redis_snapshot_counts_once(
    monkeypatch, redis_step_lands
):
    buyer = make_user(balance=10_000)
    product = limited_product(2, stock_quantity=10)
    buy(buyer, product, 1)  # kept
    cancelled = buy(buyer, product, 1)
    with redis_steps_held() as held:
        order_cancel(order_id=cancelled.id, user_id=buyer.id)  # committed; Redis still says 8, holds 2

    if redis_step_lands == "after the repair":
        report = inventory_reconcile()
        run_all(held)
    else:
        around_the_redis_snapshot(monkeypatch, after=lambda: run_all(held))
        report = inventory_reconcile()

    assert redis_counts.available(product_ids=[product.id]) == {product.id: 9} == on_hand_by_product()
    assert redis_counts.holdings(product_id=product.id) == {buyer.id: 1}  # the return taken off once
    assert report.drifted == [] and report.holding_drifts == {}  # pending, not drift
    with pytest.raises(PurchaseLimitReached):
        buy(buyer, product, 2)  # 1 held + 2 would pass the limit of 2
    buy(buyer, product, 1)
    assert_redis_matches_the_ledger(product)


def test_a_cancel_committed_after_the_database_snapshot_and_applied_before_the_redis_snapshot_is_not_taken_away(
    monkeypatch,
):
    buyer = make_user(balance=10_000)
    product = limited_product(2, stock_quantity=2)
    buy(buyer, product, 1)  # kept
    cancelled = buy(buyer, product, 1)  # the last unit
    around_the_redis_snapshot(
        monkeypatch, before=lambda: in_another_session(lambda: order_cancel(order_id=cancelled.id, user_id=buyer.id))
    )

    report = inventory_reconcile()

    assert redis_counts.available(product_ids=[product.id]) == {product.id: 1} == on_hand_by_product()
    assert redis_counts.holdings(product_id=product.id) == {buyer.id: 1}
    assert report.drifted == [] and report.holding_drifts == {}
    buy(buyer, product, 1)  # neither OUT_OF_STOCK nor PURCHASE_LIMIT_REACHED: the unit is back
    assert redis_counts.holdings(product_id=product.id) == {buyer.id: 2}
    assert_redis_matches_the_ledger(product)


@pytest.mark.parametrize(
    "ordering",
    [
        "committed before the database snapshot, applied after the redis snapshot",
        "committed after the database snapshot, applied before the redis snapshot",
    ],
)
def test_a_restock_racing_reconciliation_counts_once(monkeypatch, ordering):
    product = make_product(price=10, stock_quantity=3)

    def restock():
        stock_adjust(product=product, quantity=5, reason="delivery")

    if ordering.startswith("committed before"):
        with redis_steps_held() as held:
            restock()
        around_the_redis_snapshot(monkeypatch, after=lambda: run_all(held))
    else:
        around_the_redis_snapshot(monkeypatch, before=lambda: in_another_session(restock))

    report = inventory_reconcile()

    assert redis_counts.available(product_ids=[product.id]) == {product.id: 8} == on_hand_by_product()
    assert report.drifted == []
    assert_redis_matches_the_ledger(product)


def test_a_new_products_initial_stock_applied_after_the_redis_snapshot_counts_once(monkeypatch):
    with redis_steps_held() as held:
        product = product_create(name="late", price=10, stock_quantity=4)
    around_the_redis_snapshot(monkeypatch, after=lambda: run_all(held))

    report = inventory_reconcile()

    assert redis_counts.available(product_ids=[product.id]) == {product.id: 4}
    assert report.drifted == []
    assert_redis_matches_the_ledger(product)


def test_a_cancel_whose_redis_step_lands_after_a_rebuild_counts_once():
    buyer = make_user(balance=10_000)
    product = limited_product(3, stock_quantity=10)
    buy(buyer, product, 1)
    cancelled = buy(buyer, product, 2)
    with redis_steps_held() as held:
        order_cancel(order_id=cancelled.id, user_id=buyer.id)
    redis_counts.redis_client().flushdb()  # Redis lost its data, and the cancel's step has not run yet

    assert inventory_reconcile().rebuilt
    run_all(held)  # the delayed step arrives after the rebuild counted the return

    assert redis_counts.available(product_ids=[product.id]) == {product.id: 9} == on_hand_by_product()
    assert redis_counts.holdings(product_id=product.id) == {buyer.id: 1}
    assert_redis_matches_the_ledger(product)


def test_a_cancel_whose_redis_step_never_ran_is_applied_by_reconciliation_once():
    buyer = make_user(balance=10_000)
    product = limited_product(3, stock_quantity=10)
    buy(buyer, product, 1)
    cancelled = buy(buyer, product, 2)
    with redis_steps_held():
        order_cancel(order_id=cancelled.id, user_id=buyer.id)  # the worker died after its commit

    inventory_reconcile()
    inventory_reconcile()

    assert redis_counts.available(product_ids=[product.id]) == {product.id: 9} == on_hand_by_product()
    assert redis_counts.holdings(product_id=product.id) == {buyer.id: 1}
    assert_redis_matches_the_ledger(product)


def test_a_late_copy_of_a_moves_redis_step_after_it_was_acknowledged_changes_nothing():
    product = make_product(price=10, stock_quantity=3)
    with redis_steps_held() as held:
        stock_adjust(product=product, quantity=5, reason="delivery")
    inventory_reconcile()  # applies the move its step had not
    inventory_reconcile()  # sees it committed and applied: acknowledged, and Redis forgets it

    run_all(held)  # the step at last (a process frozen between its commit and its Redis call)

    assert redis_counts.available(product_ids=[product.id]) == {product.id: 8} == on_hand_by_product()
    assert nothing_left_pending()
    assert (
        redis_counts.redis_client().ttl(
            redis_counts.move_key(models.StockMovement.objects.last().move_token, shard=ONLY_SHARD)
        )
        > 0
    )


def test_a_crash_between_acknowledging_a_move_and_redis_forgetting_it_is_repeated_harmlessly(monkeypatch):
    buyer = make_user(balance=10_000)
    product = limited_product(3, stock_quantity=10)
    buy(buyer, product, 1)
    order_cancel(order_id=buy(buyer, product, 2).id, user_id=buyer.id)  # applied at once, as usual

    def redis_gone(*args, **kwargs):
        raise ConnectionError("Redis went away")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(redis_counts, "repair", redis_gone)
        with pytest.raises(ConnectionError):
            inventory_reconcile()
    assert not models.PendingMove.objects.exists()  # acknowledged...
    assert redis_counts.redis_client().scard(ONLY_SHARD.moves_key) == 1  # ...and still tracked in Redis

    report = inventory_reconcile()

    assert report.drifted == [] and report.holding_drifts == {}
    assert redis_counts.available(product_ids=[product.id]) == {product.id: 9} == on_hand_by_product()
    assert redis_counts.holdings(product_id=product.id) == {buyer.id: 1}
    assert nothing_left_pending()
