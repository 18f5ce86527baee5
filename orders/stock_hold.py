"""Holding an order's stock while it is written: one small interface, two designs.

The new design (the default) reserves the units in Redis first (inventory.services.stock_reserve:
one Lua script counts the admission, checks stock and purchase limits, all or nothing), and the
order's transaction records the sale against that reservation. The old design (ORDER_STRATEGY=old,
the report's, kept to measure against: inventory/legacy.py) locks each product in Redis around a
database decrement in the order's transaction, with no rate or purchase limits and no balance
retry. `stock_hold` picks one, once per order."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from django.conf import settings

from inventory.errors import OutOfStock
from inventory.legacy import product_locks, stock_take_locked
from inventory.redis_counts import AdmissionCounter
from inventory.services import Reservation, prices_for_order, stock_record_sale, stock_release, stock_reserve
from orders.errors import PriceChanged

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OrderLine:
    product_id: int
    quantity: int
    seen_price: int


def prices_checked(lines: list[OrderLine], quantities: dict[int, int]) -> dict[int, int]:
    """The database's prices, every product on sale and priced as the caller saw it. Raises
    NOT_FOUND, PRODUCT_UNAVAILABLE, PRICE_CHANGED."""
    prices = prices_for_order(product_ids=list(quantities))
    changed = sorted({line.product_id for line in lines if line.seen_price != prices[line.product_id]})
    if changed:
        raise PriceChanged(details={"currentPrices": {str(pid): prices[pid] for pid in changed}})
    return prices


class StockHold(Protocol):
    """An order's units held while the order is written."""

    token: uuid.UUID  # the order row's reservation_token
    payment_attempts: int | None  # the balance change's retry bound (None: the setting's)

    def hold(self) -> contextlib.AbstractContextManager[dict[int, int]]:
        """Hold the units for the block, which gets the checked prices (prices_checked's errors,
        and the hold's own: OUT_OF_STOCK, RATE_LIMITED, PURCHASE_LIMIT_REACHED, LOCK_TIMEOUT...).
        A block that fails gives the units back."""

    def record_sale(self, reference: str) -> None:
        """Inside the order's transaction: the units sold, the ledger's rows named `reference`."""

    def give_back(self) -> None:
        """After a failure: the units are no longer held."""


@dataclass
class ReservedInRedis:
    """The new design: units reserved in Redis before the order's transaction, which records the
    sale against the reservation (fenced by the stock epoch); any failure releases it, and a
    crash leaves it to reconciliation."""

    lines: list[OrderLine]
    quantities: dict[int, int]
    user_id: int
    counters: tuple[AdmissionCounter, ...]
    payment_attempts: int | None = None
    reservation: Reservation | None = field(default=None, init=False)

    @property
    def token(self) -> uuid.UUID:
        return self.reservation.token

    def reserve(self) -> Reservation:
        """stock_reserve, its refusal for stock named as the price check names it: a product
        that is missing, off sale or repriced before its stock (a product not for sale has no
        stock either). The reservation also counts the attempt against the rate limits."""
        try:
            self.reservation = stock_reserve(quantities=self.quantities, holder=self.user_id, counters=self.counters)
        except OutOfStock:
            prices_checked(self.lines, self.quantities)
            raise
        return self.reservation

    @contextlib.contextmanager
    def hold(self) -> Iterator[dict[int, int]]:
        # Reserved first, as the one-statement order is: an order refused for its prices or
        # products is counted against the rate limits as every other one.
        self.reserve()
        try:
            yield prices_checked(self.lines, self.quantities)
        except BaseException:
            self.give_back()
            raise

    def record_sale(self, reference: str) -> None:
        stock_record_sale(reservation=self.reservation, quantities=self.quantities, reference=reference)

    def give_back(self) -> None:
        """Give the reservation back; if Redis is unreachable now, reconciliation will."""
        try:
            stock_release(reservation=self.reservation)
        except Exception:
            logger.warning("could not release reservation %s; reconciliation will", self.reservation.token,
                           exc_info=True)  # fmt: skip


@dataclass
class LockedProducts:
    """The old design: prices checked, then a Redis lock per product (in id order) around the
    order's whole transaction, which reads and decrements the stock in the database. One
    balance attempt, no retry."""

    lines: list[OrderLine]
    quantities: dict[int, int]
    token: uuid.UUID = field(default_factory=uuid.uuid4)
    payment_attempts: int | None = 1

    @contextlib.contextmanager
    def hold(self) -> Iterator[dict[int, int]]:
        prices = prices_checked(self.lines, self.quantities)
        with product_locks(list(self.quantities)):
            yield prices

    def record_sale(self, reference: str) -> None:
        stock_take_locked(quantities=self.quantities, reference=reference)

    def give_back(self) -> None:
        """Nothing held outside the transaction: its decrement rolls back with it, and the locks
        go when the hold's block ends."""


def stock_hold(
    *, lines: list[OrderLine], quantities: dict[int, int], user_id: int, counters: tuple[AdmissionCounter, ...]
) -> StockHold:
    """The design ORDER_STRATEGY names: "old" (product locks, no rate or purchase limits), or
    the Redis reservation."""
    if settings.ORDER_STRATEGY == "old":
        return LockedProducts(lines=lines, quantities=quantities)
    return ReservedInRedis(lines=lines, quantities=quantities, user_id=user_id, counters=counters)
