"""Each error class says whether an Idempotency-Key keeps it as the key's answer
(DomainError.replayable): refusals for the order's money or coupon, given once its stock was
reserved, are; every other refusal and every transient failure is not, so a retry is real."""

import pytest

import accounts.errors
import coupons.errors
import inventory.errors
import inventory.legacy
import kernel.errors
import orders.errors
import orders.idempotency
from kernel.errors import DomainError

REPLAYABLE = {
    accounts.errors.AccountMissing: False,
    accounts.errors.AdjustmentNotPending: False,
    accounts.errors.BalanceConflict: False,
    accounts.errors.InsufficientBalance: True,
    accounts.errors.InvalidCredentials: False,
    accounts.errors.LoginRateLimited: False,
    accounts.errors.OwnAdjustment: False,
    kernel.errors.ServiceUnavailable: False,
    coupons.errors.CouponInvalid: True,
    inventory.errors.OutOfStock: False,
    inventory.errors.ProductNotFound: False,
    inventory.errors.ProductUnavailable: False,
    inventory.errors.PurchaseLimitReached: False,
    inventory.errors.RateLimited: False,
    inventory.errors.ReservationLost: False,
    inventory.errors.StockNotLoaded: False,
    inventory.errors.StockTotalTooLarge: False,
    inventory.legacy.LockTimeout: False,
    orders.errors.CancelWindowClosed: False,
    orders.errors.IdempotencyKeyReused: False,
    orders.errors.InvalidStatusTransition: False,
    orders.errors.NotYourOrder: False,
    orders.errors.OrderNotFound: False,
    orders.errors.OrderOutcomeUnknown: False,
    orders.errors.PaymentBacklogFull: False,
    orders.errors.PriceChanged: False,
    orders.errors.TooManyIdempotencyKeys: False,
    orders.errors.TooManyUnpaidOrders: False,
    orders.idempotency.KeyTakenOver: False,
    orders.idempotency.RememberedError: False,
    orders.idempotency.RequestInProgress: False,
}


def _subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | _subclasses(sub)
    return found


@pytest.mark.parametrize("error, replayable", REPLAYABLE.items(), ids=lambda value: getattr(value, "__name__", ""))
def test_an_error_says_whether_an_idempotency_key_replays_it(error, replayable):
    assert error.replayable is replayable


def test_every_domain_error_is_in_the_table():
    assert {cls for cls in _subclasses(DomainError) if ".tests." not in cls.__module__} <= set(REPLAYABLE)
