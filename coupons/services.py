"""Coupon redemption: limits that hold under concurrency."""

from __future__ import annotations

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from coupons.errors import CouponInvalid
from coupons.models import Coupon, CouponRedemption


def coupon_discount(*, code: str, order_amount: int) -> int:
    """The discount the coupon gives an order of `order_amount`, checked but not taken (no
    lock): an order works out what it pays with this, and takes the use last (coupon_redeem).
    Raises CouponInvalid with a reason."""
    return _usable(code=code, order_amount=order_amount).discount_for(order_amount)


def _usable(*, code: str, order_amount: int) -> Coupon:
    coupon = Coupon.objects.filter(code=code).first()
    if coupon is None or not coupon.active:
        raise CouponInvalid("NOT_FOUND", "No such coupon.")
    now = timezone.now()
    if (coupon.valid_from and now < coupon.valid_from) or (coupon.valid_until and now >= coupon.valid_until):
        raise CouponInvalid("EXPIRED", "The coupon is not valid at this time.")
    if order_amount < coupon.min_order_amount:
        raise CouponInvalid("MIN_ORDER_AMOUNT", f"The order must be at least {coupon.min_order_amount}.")
    return coupon


def coupon_redeem(
    *, code: str, user_id: int, order_amount: int, reference: str, discount: int | None = None
) -> CouponRedemption:
    """Use a coupon once on an order of `order_amount`; returns the redemption with its discount.

    Safe because the use is counted by one conditional UPDATE (`times_used < usage_limit`) that
    also row-locks the coupon until the order commits: concurrent redemptions of the same coupon
    queue there, so the per-user count read after it sees every committed use. A crash rolls
    the count back with the order. Call it as late in the order's transaction as possible (after
    the payment), so the lock is held for the least time. `discount`: what the order was charged
    for (coupon_discount); if the coupon changed since, nothing is redeemed. Raises CouponInvalid
    with a reason.
    """
    coupon = _usable(code=code, order_amount=order_amount)
    with transaction.atomic(savepoint=False):
        taken = Coupon.objects.filter(
            Q(usage_limit__isnull=True) | Q(times_used__lt=F("usage_limit")), pk=coupon.pk
        ).update(times_used=F("times_used") + 1)
        if not taken:
            raise CouponInvalid("USAGE_LIMIT_REACHED", "The coupon has been used up.")
        if coupon.per_user_limit is not None:
            used = CouponRedemption.objects.filter(coupon=coupon, user_id=user_id, released=False).count()
            if used >= coupon.per_user_limit:
                raise CouponInvalid("PER_USER_LIMIT_REACHED", "You have already used this coupon.")
        given = coupon.discount_for(order_amount)
        if discount is not None and given != discount:  # edited in the admin meanwhile
            raise CouponInvalid("CHANGED", "The coupon changed while the order was placed; order again.")
        return CouponRedemption.objects.create(coupon=coupon, user_id=user_id, reference=reference, discount=given)


def coupon_release(*, reference: str) -> bool:
    """Give back the use of a coupon (its order was cancelled). Idempotent."""
    with transaction.atomic(savepoint=False):
        redemption = CouponRedemption.objects.select_for_update().filter(reference=reference, released=False).first()
        if redemption is None:
            return False
        CouponRedemption.objects.filter(pk=redemption.pk).update(released=True)
        Coupon.objects.filter(pk=redemption.coupon_id).update(times_used=F("times_used") - 1)
        return True
